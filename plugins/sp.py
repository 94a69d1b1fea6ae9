"""Relation distillation: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import DistillInputs, Hyperparameter, Method, register_method


@register_method("sp")
class SimilarityPreserving(Method):
    """Similarity-preserving KD (relation kind): match the batch's normalised activation similarity matrices.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    The last stage's map of each sample is flattened to a vector f (C·H·W long, any shape per model);
    G = f fᵀ is the (N, N) similarity matrix, each row L2-normalised. The loss is
    ``gamma · ‖G_t − G_s‖²_F / N²``, the paper's formula (and mdistiller's ``similarity_loss``);
    gamma defaults to the paper's 3000. Deliberate difference: the paper sums the term over a chosen
    set of layer pairs; here, as in mdistiller, only the last stage is used.
    """

    kind = "relation"
    needs_teacher_logits = False
    needs_features = (-1,)
    hyperparameters = {"gamma": Hyperparameter(low=300.0, high=30000.0, default=3000.0, log=True)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student, teacher = inputs.student_features[-1], inputs.teacher_features[-1].detach()
        n = student.shape[0]
        difference = _similarity(teacher) - _similarity(student)
        return self.gamma * difference.pow(2).sum() / (n * n)


def _similarity(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)
