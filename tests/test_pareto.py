"""Pareto membership and hypervolume against hand-made points."""

from __future__ import annotations

import numpy as np
import pytest

from autokd.pareto import hypervolume, pareto_mask

# (retention, compression, latency_ms): retention and compression up, latency down.
POINTS = np.array(
    [
        [0.99, 10.0, 5.0],  # A: best retention
        [0.95, 50.0, 2.0],  # B: balanced
        [0.94, 40.0, 3.0],  # C: dominated by B
        [0.90, 80.0, 2.5],  # D: best compression
        [0.95, 50.0, 2.0],  # E: duplicate of B, kept
    ]
)


def test_dominated_point_is_off_the_front():
    assert pareto_mask(POINTS).tolist() == [True, True, False, True, True]


def test_latency_direction_is_minimised():
    faster = np.array([[0.9, 10.0, 1.0], [0.9, 10.0, 2.0]])
    assert pareto_mask(faster).tolist() == [True, False]


def test_hypervolume_of_one_point_is_its_box():
    # box: (0.99 - 0.9) × (10 - 1) × (6 - 5)
    assert hypervolume(np.array([[0.99, 10.0, 5.0]]), (0.9, 1.0, 6.0)) == pytest.approx(0.09 * 9 * 1)


def test_hypervolume_of_two_points_is_union_of_boxes():
    a, b = [0.99, 10.0, 5.0], [0.95, 50.0, 2.0]
    ref = (0.9, 1.0, 6.0)
    box_a = 0.09 * 9 * 1
    box_b = 0.05 * 49 * 4
    overlap = 0.05 * 9 * 1  # min retention gain × min compression gain × min latency gain
    assert hypervolume(np.array([a, b]), ref) == pytest.approx(box_a + box_b - overlap)


def test_points_worse_than_reference_add_nothing():
    assert hypervolume(np.array([[0.85, 100.0, 1.0]]), (0.9, 1.0, 6.0)) == 0.0


def test_dominated_points_do_not_change_hypervolume():
    ref = (0.9, 1.0, 6.0)
    front = POINTS[pareto_mask(POINTS)]
    assert hypervolume(POINTS, ref) == pytest.approx(hypervolume(front, ref))
