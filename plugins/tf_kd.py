"""Self distillation: Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR 2020."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import DistillInputs, Hyperparameter, Method, register_method


@register_method("tf_kd")
class TeacherFreeKD(Method):
    """Teacher-free KD, Tf-KD_reg (self kind): distil from a hand-made teacher that is always right.

    Yuan, Tay, Li, Wang & Feng, "Revisiting Knowledge Distillation via Label Smoothing Regularization",
    CVPR 2020.
    The virtual teacher puts ``correct_prob`` on the true class and spreads the rest evenly over the
    others; as in the paper, that distribution p^d is softened by softmax(p^d / T), and so is the
    student. The loss is ``T² · KL(softmax(p^d/T) ‖ softmax(z/T))``, averaged over the batch and
    scaled by T² like Hinton KD. No teacher model is used. correct_prob defaults to 0.9, a common
    label-smoothing level; T to 4, the Hinton KD default, since the authors' temperatures lie outside
    the shared range.

    Deliberate differences from the authors' code (``loss_kd_regularization``): it leaves the student
    unsoftened, ``KL(softmax(p^d/T) ‖ softmax(z))``, with T = 20 (ResNet-18) or 40 (MobileNetV2) on
    CIFAR-100, so its target is nearly uniform; it averages the KL over batch × classes (KLDivLoss's
    default 'mean') and multiplies by a per-model ``multiplier`` (100 or 1) instead of T²; its
    correct_prob is 0.99 (inside the range). Here the student is softened as in the paper's formula,
    so the KL is smallest at logits p^d + constant, whatever T.
    """

    kind = "self"
    needs_teacher_logits = False
    hyperparameters = {
        "correct_prob": Hyperparameter(low=0.5, high=0.99, default=0.9),
        "temperature": Hyperparameter(low=1.0, high=8.0, default=4.0),
    }

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = self.temperature
        num_classes = inputs.student_logits.shape[1]
        on_target = F.one_hot(inputs.targets, num_classes).to(inputs.student_logits.dtype)
        off_target = (1 - self.correct_prob) / max(1, num_classes - 1)
        virtual = on_target * self.correct_prob + (1 - on_target) * off_target
        teacher = F.softmax(virtual / t, dim=1)
        student = F.log_softmax(inputs.student_logits / t, dim=1)
        return F.kl_div(student, teacher, reduction="batchmean") * t * t
