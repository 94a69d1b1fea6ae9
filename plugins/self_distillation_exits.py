"""Self distillation: Zhang et al., "Be Your Own Teacher", ICCV 2019."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autokd.methods import DistillInputs, Hyperparameter, Method, ModelInfo, register_method


@register_method("self_distillation_exits")
class SelfDistillationExits(Method):
    """Self distillation with auxiliary exits (self kind): shallow stages learn from labels and the final output.

    Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the Performance of Convolutional
    Neural Networks via Self Distillation", ICCV 2019.
    A small exit (global average pool + linear) sits on each of the student's three stages before the
    last; the model's own head is the deepest classifier. Summed over the exits:
    ``(1 − alpha) · CE(exit, labels) + alpha · KL(softmax(final/T) ‖ softmax(exit/T))``, each averaged
    over the batch, with the final output detached, so it is the teacher. The exits live in this
    method, not in the student: they are trained alongside it and are not part of the exported model.
    No teacher model is used. alpha and T default to 0.3 and 3, the defaults of the authors' public
    code (ArchipLab-LinfengZhang/pytorch-self-distillation-final).

    Deliberate differences from that code: it takes the soft cross-entropy H(final, exit) where this
    takes the KL, which differs by the final output's entropy, a constant, so the gradients are the
    same; like the paper and that code there is no T² factor. Their exits are deeper (an attention
    gate and separable-convolution stacks before the linear layer); these are a pool and a linear
    layer, which keeps them cheap. The CE of the deepest classifier is the trainer's task loss, not
    part of this term. The paper's feature-hint term (λ ‖F_i − F_C‖², absent from that code too) is
    left out.
    """

    kind = "self"
    needs_teacher_logits = False
    needs_features = (-4, -3, -2)  # the last stage has the student's own head
    needs_teacher_features = False
    hyperparameters = {
        "alpha": Hyperparameter(low=0.05, high=0.9, default=0.3),
        "temperature": Hyperparameter(low=1.0, high=8.0, default=3.0),
    }

    def __init__(self, student: ModelInfo | None = None, teacher: ModelInfo | None = None, **hparams: float):
        super().__init__(student, teacher, **hparams)
        if student is None:
            raise ValueError(
                "method 'self_distillation_exits' needs the student's ModelInfo to size its exits"
            )
        self.exits = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, student.num_classes))
            for channels in student.feature_channels
        )

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = self.temperature
        final = F.softmax(inputs.student_logits.detach() / t, dim=1)
        loss = inputs.student_logits.new_zeros(())
        for exit_head, feature in zip(self.exits, inputs.student_features, strict=True):
            logits = exit_head(feature)
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), final, reduction="batchmean")
            loss = loss + (1 - self.alpha) * F.cross_entropy(logits, inputs.targets) + self.alpha * kl
        return loss
