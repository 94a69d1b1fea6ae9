"""Pareto membership and hypervolume over autokd's three objectives.

Retention and compression are maximised, latency is minimised. The hypervolume is Optuna's exact
computation (WFG) over the points, turned into a minimisation problem, against a reference point that
the study fixes before the search starts.
"""

from __future__ import annotations

import numpy as np
from optuna._hypervolume import compute_hypervolume

OBJECTIVES = ("retention", "compression", "latency_ms")
DIRECTIONS = ("maximize", "maximize", "minimize")
_SIGN = np.array([-1.0, -1.0, 1.0])  # multiply to turn every objective into one to minimise


def _as_losses(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float).reshape(-1, len(OBJECTIVES))
    return points * _SIGN


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """``mask[i]`` is True when no other point is at least as good everywhere and better somewhere.

    ``points`` has one row per trial with columns (retention, compression, latency_ms). Duplicates of
    a non-dominated point are all kept.
    """
    losses = _as_losses(points)
    n = len(losses)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(losses <= losses[i], axis=1)
        better = np.any(losses < losses[i], axis=1)
        if np.any(no_worse & better):
            mask[i] = False
    return mask


def hypervolume(points: np.ndarray, reference: tuple[float, float, float]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (retention, compression, latency_ms).

    Points that do not strictly improve on the reference in every objective add nothing.
    """
    losses = _as_losses(points)
    ref = np.asarray(reference, dtype=float) * _SIGN
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))
