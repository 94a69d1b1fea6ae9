"""Relation distillation: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018."""

from __future__ import annotations

import torch
from autokd.methods.builtin._shapes import pooled

from autokd.methods import DistillInputs, Hyperparameter, Method, register_method

_EPS = 1e-7  # the authors' eps, in the norm's denominator and inside the log


@register_method("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (relation kind): KL between cosine-similarity neighbour distributions.

    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.
    On the last stage's pooled embeddings, each divided by (its norm + eps): the cosine similarity of
    every pair, mapped to [0, 1] by (s + 1) / 2, is turned into conditional probabilities p(j | i) by
    normalising each row; the loss is ``beta · mean over all (i, j) of p_t log((p_t + eps) / (p_s + eps))``,
    the authors' ``cosine_similarity_loss`` (also mdistiller's ``pkt_loss``), so widths may differ.
    beta defaults to 30000, the PKT weight of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020),
    which offsets the mean over N² pairs.

    Deliberate difference: the paper writes the divergence as a sum over the pairs; the authors' code,
    followed here, takes the mean over all N² pairs, hence the large beta.
    """

    kind = "relation"
    needs_teacher_logits = False
    needs_features = (-1,)
    hyperparameters = {"beta": Hyperparameter(low=1000.0, high=100000.0, default=30000.0, log=True)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        p_student = _conditional_probabilities(pooled(inputs.student_features[-1]))
        p_teacher = _conditional_probabilities(pooled(inputs.teacher_features[-1].detach()))
        kl = p_teacher * torch.log((p_teacher + _EPS) / (p_student + _EPS))
        return self.beta * kl.mean()


def _conditional_probabilities(e: torch.Tensor) -> torch.Tensor:
    """(N, N) row-normalised (cosine + 1) / 2 similarities."""
    unit = e / (e.norm(dim=1, keepdim=True) + _EPS)
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)
