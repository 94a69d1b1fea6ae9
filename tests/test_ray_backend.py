"""What only the Ray driver does: turn Tune's last report into a trial outcome, run trials concurrently.

The behaviours both backends share are in test_drivers.py, which runs each on Ray too.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from optuna.trial import TrialState

from autokd.cli import main
from autokd.drivers import ray as ray_driver  # the test extra installs Ray: no skipping when it is missing
from autokd.record import EarlyStop, load_records


def test_a_last_report_with_an_error_is_a_failed_trial_with_that_message():
    outcome = ray_driver.outcome_of({ray_driver.ERROR: "ValueError: bad"}, errored=False, stop=None)
    assert (outcome.state, outcome.error) == (TrialState.FAIL, "ValueError: bad")


def test_a_trial_ray_reports_as_errored_is_failed_with_rays_last_line():
    outcome = ray_driver.outcome_of(None, errored=True, stop=None, ray_error="worker died")
    assert outcome.state == TrialState.FAIL and "worker died" in outcome.error


def test_a_trial_stopped_by_the_rule_is_pruned_even_with_metrics_in_its_last_report():
    stop = EarlyStop(epoch=2, val_accuracy_per_epoch=[0.1, 0.2], seconds_saved=1.0, stopped_by="median rule")
    last = {ray_driver.HISTORY: [0.1, 0.2], "retention": 0.9}
    outcome = ray_driver.outcome_of(last, errored=False, stop=stop)
    assert outcome.state == TrialState.PRUNED and outcome.stop == stop


def test_only_a_final_result_completes_a_trial():
    outcome = ray_driver.outcome_of({ray_driver.HISTORY: [0.5]}, errored=False, stop=None)
    assert outcome.state == TrialState.FAIL and "before its final report" in outcome.error


def test_a_final_result_is_a_complete_trial_with_its_typed_result(tiny_resources):
    from autokd.trial import TrialConfig, run_trial

    config = TrialConfig(
        "resnet",
        0.125,
        0.5,
        stem="small",
        methods=(),
        epochs=1,
        batch_size=64,
        calibration_batches=1,
        latency_min_run_time_s=0.02,
    )
    result = run_trial(config, tiny_resources.data, tiny_resources.teacher_reference())
    outcome = ray_driver.outcome_of({ray_driver.TRIAL_RESULT: json.dumps(result.as_attrs())}, False, None)
    assert outcome.state == TrialState.COMPLETE
    assert (
        outcome.result.objectives() == result.objectives() and outcome.result.parameters == result.parameters
    )


@pytest.mark.slow
def test_a_ray_run_with_two_concurrent_trials_writes_the_run_folder_the_report_reads(
    tiny_study, shared_runs, tmp_path, ray_cluster, write_study
):
    tiny_study["name"] = "ray-two"
    tiny_study["budget"]["trials"] = 2
    tiny_study["parallel"] = {"max_concurrent_trials": 2, "cpus_per_trial": 1}
    study_path = write_study(tmp_path, tiny_study)
    teacher_metrics = next((shared_runs / "_teachers").glob("*/metrics.json"), None)
    before = teacher_metrics.stat().st_mtime_ns if teacher_metrics else None
    reports = tmp_path / "reports"

    code = main(
        ["search", str(study_path), "--backend", "ray", "--address", ray_cluster]
        + ["--runs-dir", str(shared_runs), "--reports-dir", str(reports)]
    )

    assert code == 0
    records = load_records(shared_runs / "ray-two")
    assert [t.state for t in records.trials] == ["COMPLETE"] * 2
    first, second = sorted(records.trials, key=lambda t: t.started)
    assert second.started < first.finished, "the two trials did not run at the same time"
    assert {"teacher", "reference_point"} <= {k for k, v in vars(records).items() if v}
    if before is not None:
        assert teacher_metrics.stat().st_mtime_ns == before, "the teacher was trained again"
    assert len(pd.read_csv(reports / "ray-two" / "pareto.csv")) >= 1
    summary = (reports / "ray-two" / "summary.md").read_text()
    assert "ray backend" in summary and "up to 2 trial(s) at a time" in summary
