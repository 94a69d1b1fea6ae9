"""Several Optuna workers on one study: worker processes sharing the run folder's journal."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from autokd.config import parse_study
from autokd.search import prepare_search, run_search
from tests.test_search import trials_of


def quiet(_: str) -> None:
    pass


@pytest.mark.slow
def test_two_worker_processes_share_one_journal_study_without_lost_or_duplicated_trials(
    tiny_study, shared_runs
):
    tiny_study["name"] = "two-workers"
    tiny_study["budget"]["trials"] = 4
    study = parse_study(tiny_study)
    # A trial that a killed run left RUNNING: the parent fails it once, before any worker starts.
    prepare_search(study, runs_root=shared_runs, log=quiet).optuna_study.ask()

    outcome = run_search(study, runs_root=shared_runs, workers=2, log=quiet, progress=False)

    trials = trials_of(outcome.run_dir, "two-workers")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert outcome.stopped_reason == "budget" and outcome.completed == len(complete) == 4
    assert [t.number for t in trials] == list(range(len(trials))), "trial numbers have gaps or repeats"
    assert len(trials) == 5 and len(failed) == 1 and "killed" in failed[0].user_attrs["error"]
    assert len({t.user_attrs["worker"] for t in complete}) == 2, "both workers should have run trials"
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4, "workers proposed the same settings"
    assert all("retention" in t.user_attrs and t.values for t in complete)


def test_each_search_records_how_it_ran_for_the_report(tiny_study, shared_runs):
    tiny_study["name"] = "recorded"
    tiny_study["budget"]["trials"] = 1
    outcome = run_search(parse_study(tiny_study), runs_root=shared_runs, log=quiet, progress=False)
    from autokd.reporting import load_results

    executions = load_results(outcome.run_dir).executions
    assert len(executions) == 1
    run = executions[0]
    assert run["backend"] == "optuna" and run["concurrent_trials"] == 1 and run["storage"] == "journal"
    assert "one measurement at a time" in run["latency_measurement"]
