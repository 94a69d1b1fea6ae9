"""A busy machine: torch threads follow the cores other processes leave free; a time limit that ends
a search before any trial says why."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

import autokd
from autokd.config import parse_study
from autokd.resources import busy_cores, free_cores, training_threads

CORES = len(os.sched_getaffinity(0))


def _spin() -> None:
    while True:
        pass


def test_free_cores_leave_out_what_other_processes_use():
    assert free_cores(busy=0.0) == CORES
    assert free_cores(busy=CORES + 3.0) == 1


@pytest.mark.skipif(CORES < 2, reason="needs two cores to tell busy from idle")
def test_processes_spinning_beside_it_are_seen_as_busy_cores():
    hogs = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(CORES)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(1.0)  # let them start spinning
        assert busy_cores() >= CORES - 0.5
    finally:
        for hog in hogs:
            hog.kill()


def test_stated_threads_are_kept_whatever_the_load(tiny_study):
    tiny_study["training"]["threads"] = 3
    assert training_threads(parse_study(tiny_study), lambda _: None) == 3


def test_a_time_limit_that_ends_the_search_before_any_trial_says_why(tiny_study, shared_runs, tmp_path):
    tiny_study["name"] = "no-time"
    tiny_study["budget"]["time_limit_minutes"] = 0.0001  # over while the data and teacher are prepared
    result = autokd.search(
        tiny_study, runs_dir=shared_runs, reports_dir=tmp_path, log=lambda _: None, progress=False
    )
    assert result.completed == 0 and str(result.stopped_reason) == "time limit"
    summary = (tmp_path / "no-time" / "summary.md").read_text()
    assert "time limit of 0.0001 min before the first trial ended" in summary
    assert "preparing the data and teacher took" in summary and "budget.time_limit_minutes" in summary
