"""Self distillation: Zhang et al., "Be Your Own Teacher", ICCV 2019."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autokd.methods import Method, DistillInputs, Hyperparameter, ModelInfo, register_method


@register_method("self_distillation_exits")
class SelfDistillationExits(Method):
    """Self distillation with auxiliary exits (self kind): shallow stages learn from labels and the final output.

    Zhang, Song, Gao, Chen, Bao & Ma, "Be Your Own Teacher: Improve the Performance of Convolutional
    Neural Networks via Self Distillation", ICCV 2019.
    A small exit (global average pool + linear) sits on each of the student's three stages before the
    last; the model's own head is the deepest classifier. Summed over the exits:
    ``(1 − alpha) · CE(exit, labels) + alpha · T² · KL(final ‖ exit)`` with both outputs softened by T and
    the final output detached, so it is the teacher. The exits live in this plugin, not in the student:
    they are trained alongside it and are not part of the exported model. No teacher model is used. The
    paper's feature-hint term is left out. alpha defaults to 0.1, the value of the authors' public code.
    """

    kind = "self"
    needs_teacher_logits = False
    needs_features = (-4, -3, -2)  # the last stage has the student's own head
    needs_teacher_features = False
    hyperparameters = {"alpha": Hyperparameter(low=0.05, high=0.9, default=0.1)}

    def __init__(self, student: ModelInfo | None = None, teacher: ModelInfo | None = None, **hparams: float):
        super().__init__(student, teacher, **hparams)
        if student is None:
            raise ValueError(
                "plugin 'self_distillation_exits' needs the student's ModelInfo to size its exits"
            )
        self.exits = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, student.num_classes))
            for channels in student.feature_channels
        )

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = inputs.temperature
        final = F.softmax(inputs.student_logits.detach() / t, dim=1)
        loss = inputs.student_logits.new_zeros(())
        for exit_head, feature in zip(self.exits, inputs.student_features, strict=True):
            logits = exit_head(feature)
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), final, reduction="batchmean") * t * t
            loss = loss + (1 - self.alpha) * F.cross_entropy(logits, inputs.targets) + self.alpha * kl
        return loss
