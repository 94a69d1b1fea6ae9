"""Feature distillation: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import Method, DistillInputs, Hyperparameter, register_method
from autokd.methods.builtin._shapes import deepest_pairs

_P = 2  # the paper's choice of exponent for the attention maps


@register_method("attention_transfer")
class AttentionTransfer(Method):
    """Attention transfer (feature kind): match L2-normalised spatial attention maps of the last 3 stages.

    Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", ICLR 2017.
    A stage's attention map is Σ_c |f_c|^p over channels (p = 2), flattened and L2-normalised, so the
    student and the teacher may have any channel counts. When the maps differ in size the student's is
    resized to the teacher's by (antialiased) bilinear interpolation. The loss is
    ``beta / 2 · Σ_stages mean((a_s − a_t)²)``, as in the authors' code; beta defaults to their 1000.
    """

    kind = "feature"
    needs_teacher_logits = False
    needs_features = (-3, -2, -1)
    hyperparameters = {"beta": Hyperparameter(low=100.0, high=10000.0, default=1000.0, log=True)}

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        pairs = deepest_pairs(inputs.student_features, inputs.teacher_features)
        loss = sum(_attention_loss(s, t) for s, t in pairs)
        return self.beta / 2 * loss


def attention_map(feature: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, H·W) L2-normalised attention of an (N, C, H, W) map, optionally resized to ``size`` first."""
    energy = feature.abs().pow(_P).sum(dim=1, keepdim=True)
    if size is not None and tuple(energy.shape[2:]) != tuple(size):
        energy = F.interpolate(energy, size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.normalize(energy.flatten(1), dim=1)


def _attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    target = attention_map(teacher)
    return (attention_map(student, size=tuple(teacher.shape[2:])) - target).pow(2).mean()
