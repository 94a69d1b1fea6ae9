"""The Ray Tune backend: a local cluster started here on 127.0.0.1, the ASHA trap, the run folder it writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from shutil import rmtree

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from autokd import ray_backend  # the test extra installs Ray: no skipping when it is missing
from autokd.cli import main
from autokd.config import parse_study
from autokd.methods import load_methods
from autokd.pareto import DIRECTIONS
from autokd.reporting import load_results
from autokd.storage import journal_storage
from tests.conftest import write_study
from tests.test_search import trials_of

tune = ray_backend.tune


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs) on 127.0.0.1 with the session's token (see conftest); its address."""
    port = _free_port()
    # Short, private temp dir: Ray's socket paths must fit in 107 bytes, and stale files stay ours.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_program = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray_program,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops every process it started
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not open its port"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's own graceful stop takes half a minute; a test cluster in a private temp dir needs none.
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        rmtree(temp_dir, ignore_errors=True)


# -- the ASHA trap, without a cluster: what the searcher tells Optuna --------------------------------


def _searcher(tiny_study: dict, trials: int = 2):
    tiny_study["budget"]["trials"] = trials
    study = parse_study(tiny_study)
    load_methods()
    storage = optuna.storages.InMemoryStorage()
    searcher = ray_backend.BudgetedOptunaSearch(
        space=ray_backend.SampledConfig(study),
        study=study,
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
    )
    return searcher, optuna.load_study(study_name=study.name, storage=storage)


def test_a_trial_stopped_with_truncated_metrics_is_told_to_optuna_as_pruned(tiny_study):
    searcher, sampler_study = _searcher(tiny_study)
    searcher.suggest("stopped")
    # What Tune hands over for a trial ASHA stopped after epoch 1 that reported objectives each epoch:
    truncated = {"retention": 0.4, "compression": 90.0, "latency_ms": 1.0, "val_accuracy": 0.4, "done": True}
    searcher.on_trial_complete("stopped", result=truncated)
    trial = sampler_study.get_trials()[0]
    assert trial.state == TrialState.PRUNED and trial.values is None and searcher.completed == 0


def test_only_a_final_report_completes_a_trial_and_counts_toward_the_budget(tiny_study):
    searcher, sampler_study = _searcher(tiny_study)
    searcher.suggest("done")
    final = {"retention": 0.9, "compression": 50.0, "latency_ms": 2.0, ray_backend.FINAL: True}
    searcher.on_trial_complete("done", result=final)
    assert sampler_study.get_trials()[0].values == [0.9, 50.0, 2.0] and searcher.completed == 1


def test_the_searcher_suggests_no_more_than_the_budget_needs(tiny_study):
    searcher, _ = _searcher(tiny_study, trials=2)
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None, "two running trials may still complete the budget of two"
    searcher.on_trial_complete("a", result={"error": "RuntimeError: boom"})
    assert searcher.suggest("c"), "a failed trial frees its place"
    for trial_id in ("b", "c"):
        searcher.on_trial_complete(
            trial_id, result={"retention": 1, "compression": 1, "latency_ms": 1, "final": True}
        )
    assert searcher.suggest("d") == ray_backend.Searcher.FINISHED and searcher.stopped_reason == "budget"


# -- the ASHA trap on a cluster: a stopped trial is PRUNED in the journal and stays off the front -----


def toy_trial(config: dict) -> None:
    """Reports objectives every epoch (the pattern that springs the trap); trials 1 and 2 learn badly."""
    number = config[ray_backend.SAMPLER_TRIAL]
    trial_config = json.loads(config[ray_backend.TRIAL_CONFIG])
    val_accuracy = 0.1 if number in (1, 2) else 0.9
    for epoch in (1, 2):
        tune.report(
            {"retention": val_accuracy, "compression": 100.0, "latency_ms": 1.0, "val_accuracy": val_accuracy}
        )
        time.sleep(0.2 * epoch)
    metrics = {
        "retention": 0.9,
        "retention_fp32": 0.9,
        "compression": 10.0 + number,
        "latency_ms": 1.0 + number,
        "parameters": 1000,
        "wall_seconds": 1.0,
        "config": trial_config,
    }
    tune.report({**metrics, ray_backend.TRIAL_METRICS: json.dumps(metrics), ray_backend.FINAL: True})


@pytest.mark.slow
def test_asha_stopped_trials_are_recorded_pruned_and_never_reach_the_front(tiny_study, tmp_path, ray_cluster):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    tiny_study.update(name="asha-trap", parallel={"max_concurrent_trials": 1})
    tiny_study["budget"].update(trials=2, epochs=3)
    # ASHA may stop a trial from epoch warmup_epochs + 1 = 2 on: trials 1 and 2 are stopped there
    tiny_study["early_stopping"] = {"enabled": True, "warmup_epochs": 1, "reduction_factor": 2}
    study = parse_study(tiny_study)
    run_dir = tmp_path / "asha-trap"
    journal = optuna.create_study(
        study_name=study.name, storage=journal_storage(run_dir), directions=list(DIRECTIONS)
    )
    with ray_backend.ray_session(ray_cluster):
        failed, reason = ray_backend.tune_study(
            study,
            journal,
            tune.with_resources(toy_trial, {"cpu": 1}),
            ray_dir=run_dir / "ray",
            emit=lambda _: None,
        )

    trials = trials_of(run_dir, "asha-trap")
    assert (failed, reason) == (0, "budget")
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.values is None and t.user_attrs["stopped_at_epoch"] == 2 for t in pruned)
    assert all(t.user_attrs["val_accuracy_per_epoch"] == [0.1, 0.1] for t in pruned)
    results = load_results(run_dir).trials
    assert not results.loc[results["state"] == "PRUNED", "on_front"].any()
    assert set(results.loc[results["on_front"], "state"]) == {"COMPLETE"}


# -- a real search on the cluster -------------------------------------------------------------------


@pytest.mark.slow
def test_a_ray_run_with_two_concurrent_trials_writes_the_run_folder_the_report_reads(
    tiny_study, shared_runs, tmp_path, ray_cluster
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
    run_dir = shared_runs / "ray-two"
    trials = trials_of(run_dir, "ray-two")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    first, second = sorted(trials, key=lambda t: t.datetime_start)
    assert second.datetime_start < first.datetime_complete, "the two trials did not run at the same time"
    assert {"family", "width", "depth", "method", "temperature", "loss_weight"} <= set(first.params)
    assert all(t.values[0] == pytest.approx(t.user_attrs["retention"]) for t in trials)
    # the students and INT8 artifacts sit under the journal's trial numbers, as `autokd export` expects
    assert sorted(p.name for p in (run_dir / "trials").iterdir()) == sorted(str(t.number) for t in trials)
    stored = optuna.load_study(study_name="ray-two", storage=journal_storage(run_dir)).user_attrs
    assert {"teacher", "reference_point", "study", "data", "executions"} <= set(stored)
    if before is not None:
        assert teacher_metrics.stat().st_mtime_ns == before, "the teacher was trained again"
    assert len(pd.read_csv(reports / "ray-two" / "pareto.csv")) >= 1
    summary = (reports / "ray-two" / "summary.md").read_text()
    assert "ray backend" in summary and "up to 2 trial(s) at a time" in summary
    assert main(["report", str(run_dir), "--reports-dir", str(tmp_path / "again")]) == 0
