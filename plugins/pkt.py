"""Relation distillation: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import Method, DistillInputs, Hyperparameter, register_method
from autokd.methods.builtin._shapes import pooled

_EPS = 1e-7


@register_method("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (relation kind): KL between cosine-similarity neighbour distributions.

    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.
    On the last stage's pooled embeddings: the cosine similarity of every pair, mapped to [0, 1] by
    (s + 1) / 2, is turned into conditional probabilities p(j | i) by normalising each row; the loss is
    the mean over all (i, j) of p_t log(p_t / p_s) (the authors' code, small eps inside the log), so
    widths may differ. beta defaults to 30000, the PKT weight of the CRD benchmark (Tian, Krishnan &
    Isola, ICLR 2020), which offsets the mean over N² pairs.
    """

    kind = "relation"
    needs_teacher_logits = False
    needs_features = (-1,)
    hyperparameters = {"beta": Hyperparameter(low=1000.0, high=100000.0, default=30000.0, log=True)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student = pooled(inputs.student_features[-1])
        teacher = pooled(inputs.teacher_features[-1].detach())
        p_student = _conditional_probabilities(student)
        p_teacher = _conditional_probabilities(teacher)
        kl = p_teacher * torch.log((p_teacher + _EPS) / (p_student + _EPS))
        return self.beta * kl.mean()


def _conditional_probabilities(e: torch.Tensor) -> torch.Tensor:
    """(N, N) row-normalised (cosine + 1) / 2 similarities."""
    unit = F.normalize(e, dim=1, eps=_EPS)
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)
