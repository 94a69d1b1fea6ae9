"""Stage features of any timm model through timm's own ``forward_intermediates`` API."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def feature_stage_indices(model: nn.Module, wanted: Sequence[int]) -> list[int]:
    """Turn stage indices (negative counts from the last stage) into ``model``'s timm feature indices.

    The result keeps the order of ``wanted`` and drops repeats: on a model with fewer stages than a
    plugin asks for, indices beyond the first stage are clamped to it (so the order never wraps).
    """
    n = len(model.feature_info)
    return list(dict.fromkeys(max(i, -n) % n if i < 0 else min(i, n - 1) for i in wanted))


def forward_with_features(
    model: nn.Module, x: torch.Tensor, indices: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits plus the outputs of the given timm feature indices (sorted ascending, non-negative)."""
    if not indices:
        return model(x), []
    final, intermediates = model.forward_intermediates(x, indices=list(indices))
    return model.forward_head(final), list(intermediates)
