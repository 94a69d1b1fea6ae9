"""Response distillation: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import DistillInputs, Hyperparameter, Method, register_method


@register_method("hinton_kd")
class HintonKD(Method):
    """Response distillation: KL(teacher ‖ student) between temperature-softened distributions, × T².

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531 (2015).
    ``T² · (1/N) Σ_n KL(softmax(z_t/T) ‖ softmax(z_s/T))``: the KL takes the student's
    log-probabilities and the teacher's probabilities (torch's argument order), is averaged over the
    batch ('batchmean', not over classes) and multiplied by T² so its gradients keep their size as T
    changes. This is the loss of mdistiller's and the CRD benchmark's KD. The paper fixes no
    temperature; the default T = 4 is the one those two use.
    """

    kind = "response"
    hyperparameters = {"temperature": Hyperparameter(low=1.0, high=8.0, default=4.0)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = self.temperature
        student_log_p = F.log_softmax(inputs.student_logits / t, dim=1)
        teacher_p = F.softmax(inputs.teacher_logits.detach() / t, dim=1)
        return F.kl_div(student_log_p, teacher_p, reduction="batchmean") * t * t
