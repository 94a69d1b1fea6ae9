"""Pareto membership and hypervolume over autokd's three objectives.

Retention and compression are maximised, latency is minimised. Both come from moocore (exact
hypervolume, non-dominated sorting), against a reference point the study fixes before the search.
"""

from __future__ import annotations

import moocore
import numpy as np

OBJECTIVES = ("retention", "compression", "latency_ms")
DIRECTIONS = ("maximize", "maximize", "minimize")
MAXIMISE = [direction == "maximize" for direction in DIRECTIONS]


def _points(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=float).reshape(-1, len(OBJECTIVES))


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """``mask[i]`` is True when no other point is at least as good everywhere and better somewhere.

    ``points`` has one row per trial with columns (retention, compression, latency_ms). Duplicates of
    a non-dominated point are all kept.
    """
    points = _points(points)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(points, maximise=MAXIMISE, keep_weakly=True), dtype=bool)


def hypervolume(points: np.ndarray, reference: tuple[float, float, float]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (retention, compression, latency_ms).

    Points that do not strictly improve on the reference in every objective add nothing.
    """
    points = _points(points)
    ref = np.asarray(reference, dtype=float)
    better = np.where(MAXIMISE, points > ref, points < ref)
    inside = points[np.all(better, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(moocore.hypervolume(inside, ref=ref, maximise=MAXIMISE))
