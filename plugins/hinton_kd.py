"""Response distillation: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import Method, DistillInputs, register_method


@register_method("hinton_kd")
class HintonKD(Method):
    """Response distillation: KL(teacher ‖ student) between temperature-softened distributions, × T².

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531 (2015).
    The KL takes the student's log-probabilities and the teacher's probabilities (torch's argument
    order), is averaged over the batch ('batchmean', not over classes) and multiplied by T² so its
    gradients keep their size as T changes.
    """

    kind = "response"

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = inputs.temperature
        student_log_p = F.log_softmax(inputs.student_logits / t, dim=1)
        teacher_p = F.softmax(inputs.teacher_logits.detach() / t, dim=1)
        return F.kl_div(student_log_p, teacher_p, reduction="batchmean") * t * t
