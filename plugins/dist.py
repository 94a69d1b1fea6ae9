"""Response distillation: Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import DistillInputs, Hyperparameter, Method, register_method

_EPS = 1e-12


@register_method("dist")
class DIST(Method):
    """DIST (response kind): match Pearson correlations of class probabilities, not the probabilities.

    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
    With p = softmax(logits / T): the inter-class relation is 1 − mean over samples of the Pearson
    correlation between the student's and the teacher's class-probability rows; the intra-class
    relation is the same over the columns (each class across the batch). The loss is
    ``T² · (beta · inter + gamma · intra)``, as in the authors' code. Correlation is invariant to the
    scale and shift of the probabilities, so the student need not match a much stronger teacher
    exactly. Defaults are the authors' (beta = gamma = 1, T = 1, their ImageNet setting).

    Deliberate difference from the authors' code: it divides by ``‖a‖·‖b‖ + 1e-8``; here the product
    is floored at 1e-12 instead, so a constant row (zero variance) still gets correlation 0 but
    otherwise the value is the plain Pearson correlation (the authors' 1e-8 visibly biases it when a
    high T flattens the probabilities).
    """

    kind = "response"
    hyperparameters = {
        "beta": Hyperparameter(low=0.25, high=4.0, default=1.0, log=True),
        "gamma": Hyperparameter(low=0.25, high=4.0, default=1.0, log=True),
        "temperature": Hyperparameter(low=1.0, high=8.0, default=1.0),
    }

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        t = self.temperature
        student = F.softmax(inputs.student_logits / t, dim=1)
        teacher = F.softmax(inputs.teacher_logits.detach() / t, dim=1)
        inter = 1.0 - _pearson(student, teacher).mean()
        intra = 1.0 - _pearson(student.T, teacher.T).mean()
        return (self.beta * inter + self.gamma * intra) * t * t


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two equally shaped 2-D tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(_EPS)
