"""Budgets a study states: size and latency checked before training, retention through Optuna's constraints."""

from __future__ import annotations

import pytest

import autokd
from autokd.budget import StopReason
from autokd.config import StudyFileError, parse_study
from autokd.reporting import load_results


def search(document: dict, runs):
    return autokd.search(document, runs_dir=runs, reports_dir=None, log=lambda _: None, progress=False)


def test_a_budget_must_be_positive():
    with pytest.raises(StudyFileError, match=r"constraints.max_size_kb"):
        parse_study({"name": "s", "constraints": {"max_size_kb": 0}})


def test_constraint_values_are_feasible_at_or_below_zero():
    constraints = parse_study(
        {"name": "s", "constraints": {"max_size_kb": 100, "min_retention": 0.95}}
    ).constraints
    assert constraints.violations(80.0, 1.0, 0.97) == {
        "max_size_kb": -20.0,
        "min_retention": pytest.approx(-0.02),
    }


@pytest.mark.slow
def test_a_student_over_the_size_budget_is_never_trained_nor_counted(tiny_study, shared_runs, monkeypatch):
    monkeypatch.setattr("autokd.budget.MAX_CONSECUTIVE_SKIPS", 3)
    tiny_study["name"] = "over-size"
    tiny_study["constraints"] = {"max_size_kb": 0.001}  # no student is that small
    tiny_study["budget"]["trials"] = 1
    result = search(tiny_study, shared_runs)
    skipped = result.records.trials
    assert len(skipped) == 3 and result.completed == 0
    assert result.stopped_reason == StopReason.SKIPPED
    assert all(t.state == "PRUNED" and "train_seconds" not in t.attrs for t in skipped)
    assert all(t.prescreened["reason"].startswith("over budget: size") for t in skipped)
    assert all(t.constraints["max_size_kb"] > 0 for t in skipped)  # infeasible, as samplers see it


@pytest.mark.slow
def test_a_student_under_the_retention_budget_is_kept_off_the_front(tiny_study, shared_runs):
    tiny_study["name"] = "under-retention"
    tiny_study["constraints"] = {"min_retention": 1.4}  # no student retains that much
    tiny_study["budget"]["trials"] = 1
    result = search(tiny_study, shared_runs)
    (trial,) = [t for t in result.records.trials if t.completed]
    assert trial.constraints["min_retention"] == pytest.approx(1.4 - trial.result.retention)
    trials = load_results(result.run_dir).trials
    assert not trials["feasible"].any() and not trials["on_front"].any()
