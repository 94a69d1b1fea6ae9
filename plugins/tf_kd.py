"""Self distillation: Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR 2020."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import Method, DistillInputs, Hyperparameter, register_method


@register_method("tf_kd")
class TeacherFreeKD(Method):
    """Teacher-free KD, Tf-KD_reg (self kind): distil from a hand-made teacher that is always right.

    Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via Label Smoothing Regularization",
    CVPR 2020.
    The virtual teacher puts ``correct_prob`` on the true class and spreads the rest evenly over the
    others; as in the paper, that distribution is softened by softmax(p / T). The loss is
    KL(virtual teacher ‖ softmax(student / T)), averaged over the batch and scaled by T² like Hinton KD
    (the authors' code uses a separate multiplier for that). No teacher model is used. correct_prob
    defaults to 0.9, a common label-smoothing level; the authors' code uses 0.99, inside the range.
    """

    kind = "self"
    needs_teacher_logits = False
    hyperparameters = {"correct_prob": Hyperparameter(low=0.5, high=0.99, default=0.9)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = inputs.temperature
        num_classes = inputs.student_logits.shape[1]
        on_target = F.one_hot(inputs.targets, num_classes).to(inputs.student_logits.dtype)
        off_target = (1 - self.correct_prob) / max(1, num_classes - 1)
        virtual = on_target * self.correct_prob + (1 - on_target) * off_target
        teacher = F.softmax(virtual / t, dim=1)
        student = F.log_softmax(inputs.student_logits / t, dim=1)
        return F.kl_div(student, teacher, reduction="batchmean") * t * t
