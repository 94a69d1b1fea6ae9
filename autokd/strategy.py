"""Spend training where the front can grow: the screen run before a sampled student is trained.

A student's deployed size (so its compression) and its INT8 latency depend only on its architecture;
they are measured in about a second on the untrained student. Only retention needs training. So before
training a candidate, autokd asks whether it *could* extend the current front:

- its retention is bounded optimistically from the completed trials: no higher than the best
  retention of any completed student at least as large (compression no higher), plus ``MARGIN``;
  with no completed student that large, it is unbounded (a larger student may retain more);
- the candidate is trained only when the point (that bound, its compression, its latency) adds
  hypervolume to the completed trials' front, i.e. is dominated by none of them and improves on the
  reference point in every objective.

A skipped candidate is recorded with its measurement and why, told to the sampler as PRUNED (so
samplers learn to avoid the region) and never counts against the trial budget nor appears on the
front. Chosen by measurement: ``benchmarks/sampler_table.py`` (README, "A search worth its compute").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autokd.pareto import hypervolume

MARGIN = 0.005  # retention a smaller student may gain over a larger one (seed noise, a better method)


def retention_bound(compression: float, completed: Sequence[Sequence[float]]) -> float:
    """Optimistic retention of a student of ``compression``: the best completed student at least as
    large (compression <= this one's), plus MARGIN; infinity when none is that large."""
    larger = [point[0] for point in completed if point[1] <= compression]
    return max(larger) + MARGIN if larger else float("inf")


def hypervolume_gain(point: Sequence[float], completed: Sequence[Sequence[float]], reference) -> float:
    """Hypervolume ``point`` would add to the front of ``completed`` (0 when it adds none)."""
    points = np.asarray(list(completed), dtype=float).reshape(-1, 3)
    candidate = np.asarray(point, dtype=float).reshape(1, 3)
    if not np.isfinite(candidate[0, 0]):
        candidate = candidate.copy()
        # An unbounded retention: above anything measured, so the gain is positive iff the point is
        # not beaten on size and latency by a student that already improves on the reference.
        candidate[0, 0] = max([reference[0], *points[:, 0]]) + 1.0
    before = hypervolume(points, reference) if len(points) else 0.0
    return hypervolume(np.vstack([points, candidate]), reference) - before


def could_extend_front(
    compression: float,
    latency_ms: float,
    completed: Sequence[Sequence[float]],
    reference,
    *,
    bound: float | None = None,
) -> bool:
    """Whether a candidate of this compression and latency could add hypervolume to the front of
    ``completed``, at the optimistic retention ``bound`` (default: :func:`retention_bound` over them)."""
    bound = retention_bound(compression, completed) if bound is None else bound
    return hypervolume_gain((bound, compression, latency_ms), completed, reference) > 1e-12


def dominating(point: Sequence[float], completed: Sequence[Sequence[float]]) -> int | None:
    """Index of a completed point at least as good as ``point`` in all three objectives, if any."""
    for i, other in enumerate(completed):
        if other[0] >= point[0] and other[1] >= point[1] and other[2] <= point[2]:
            return i
    return None


def predicted_retention(
    compression: float, latency_ms: float, completed: Sequence[Sequence[float]], k: int = 3
) -> float:
    """Retention expected of a student: the mean of the ``k`` completed students nearest to it in
    log compression and log latency (its architecture, as measured), plus MARGIN."""
    points = np.asarray(list(completed), dtype=float).reshape(-1, 3)
    here = np.log([compression, latency_ms])
    distance = np.linalg.norm(np.log(points[:, 1:]) - here, axis=1)
    nearest = np.argsort(distance, kind="stable")[:k]
    return float(points[nearest, 0].mean()) + MARGIN


def expected_gain(
    compression: float,
    latency_ms: float,
    completed: Sequence[Sequence[float]],
    feasible: Sequence[Sequence[float]],
    reference,
    predictor: str = "bound",
) -> float:
    """Hypervolume a candidate would add at its expected retention; 0 when nothing is completed yet.

    ``predictor`` ``bound``: the optimistic :func:`retention_bound` over ``completed``, capped (for a
    student larger than any measured) at the best retention so far plus two margins, so that size
    does not buy an unbounded score; ``knn``: :func:`predicted_retention`.
    """
    if not completed:
        return 0.0
    if predictor == "knn":
        retention = predicted_retention(compression, latency_ms, completed)
    else:
        retention = retention_bound(compression, completed)
        if not np.isfinite(retention):
            retention = max(point[0] for point in completed) + 2 * MARGIN
    return hypervolume_gain((retention, compression, latency_ms), feasible, reference)
