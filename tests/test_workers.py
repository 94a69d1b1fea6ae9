"""Several Optuna workers on one study: worker processes sharing the run folder's journal."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import autokd
from autokd.budget import StopReason
from autokd.storage import journal_storage


def quiet(_: str) -> None:
    pass


@pytest.mark.slow
def test_two_worker_processes_share_one_journal_study_without_lost_or_duplicated_trials(
    tiny_study, shared_runs, trials_of
):
    tiny_study["name"] = "two-workers"
    tiny_study["budget"]["trials"] = 4
    # A trial that a killed run left RUNNING: the parent fails it once, before any worker starts.
    optuna.create_study(
        study_name="two-workers",
        storage=journal_storage(shared_runs / "two-workers"),
        directions=["maximize"] * 3,
    ).ask()

    outcome = autokd.search(
        tiny_study, runs_dir=shared_runs, workers=2, log=quiet, progress=False, reports_dir=None
    )

    trials = trials_of(outcome.run_dir)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert outcome.stopped_reason == StopReason.BUDGET and outcome.completed == len(complete) == 4
    assert [t.number for t in trials] == list(range(len(trials))), "trial numbers have gaps or repeats"
    assert len(trials) == 5 and len(failed) == 1 and "killed" in outcome.records.trial(failed[0].number).error
    assert len({t.user_attrs["worker"] for t in complete}) == 2, "both workers should have run trials"
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4, "workers proposed the same settings"
    assert all("retention" in t.user_attrs and t.values for t in complete)


def test_each_search_records_how_it_ran_for_the_report(tiny_study, shared_runs):
    tiny_study["name"] = "recorded"
    tiny_study["budget"]["trials"] = 1
    outcome = autokd.search(tiny_study, runs_dir=shared_runs, log=quiet, progress=False, reports_dir=None)
    executions = outcome.records.executions
    assert len(executions) == 1
    run = executions[0]
    assert run["backend"] == "optuna" and run["concurrent_trials"] == 1 and run["storage"] == "journal"
    assert "one measurement at a time" in run["latency_measurement"]
