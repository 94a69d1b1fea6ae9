"""Shape helpers shared by the built-in feature and relation plugins (registers no plugin)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """One embedding per sample: global average over the spatial dimensions of an (N, C, H, W) map."""
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature.flatten(1)


def matched_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool both (N, C, H, W) maps to the smaller height and width, so they can be compared."""
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if tuple(student.shape[2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def deepest_pairs(
    students: list[torch.Tensor], teachers: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair student and teacher stages from the deepest one up, detaching the teacher's.

    On a model shallower than the plugin's request, stages that wrap onto the same one arrive once, so
    the two lists can differ in length; the deepest stages are the ones that correspond.
    """
    return [(s, t.detach()) for s, t in zip(reversed(students), reversed(teachers), strict=False)]
