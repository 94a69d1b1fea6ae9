"""The Optuna orchestration: journal storage, failed trials, resume after SIGKILL, and the trial function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autokd.config import parse_study
from autokd.search import JOURNAL, journal_storage, run_search, sample_config, trial_dir
from autokd.trial import STUDENT_WEIGHTS, TrialConfig
from tests.conftest import write_study

RAISING_PLUGIN = '''
from autokd.methods import Method, register_method

@register_method("explode")
class Explode(Method):
    """Response plugin that always raises (for tests)."""
    kind = "response"

    def forward(self, inputs):
        raise RuntimeError("boom from the plugin")
'''


@pytest.fixture(scope="module")
def raising_plugin(tmp_path_factory) -> str:
    """One plugin file for the module: registering 'explode' from two files would be a name clash."""
    path = tmp_path_factory.mktemp("plugins") / "explode.py"
    path.write_text(RAISING_PLUGIN)
    return str(path)


def trials_of(run_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=journal_storage(run_dir)).get_trials()


def test_completed_trials_store_objectives_and_settings(tiny_study, shared_runs):
    tiny_study["name"] = "stores"
    outcome = run_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None, progress=False)
    assert (outcome.run_dir / JOURNAL).exists() and outcome.completed == 2
    trial = trials_of(outcome.run_dir, "stores")[0]
    assert trial.state == TrialState.COMPLETE and len(trial.values) == 3
    assert trial.values[0] == pytest.approx(trial.user_attrs["retention"])
    assert {"family", "width", "depth", "method", "temperature", "loss_weight"} <= set(trial.params)
    for key in (
        "retention_fp32",
        "parameters",
        "latency_iqr_ms",
        "wall_seconds",
        "compression",
        "parameter_ratio",
        "latency_fp32_ms",
        "int8_speedup_vs_fp32",
        "int8_fp32_agreement",
        "artifact_bytes",
    ):
        assert key in trial.user_attrs
    assert (trial.user_attrs["backend"], trial.user_attrs["runtime"]) == ("onnxruntime", "onnxruntime")
    assert (
        trial.user_attrs["latency"]["runtime_version"]
        and trial.user_attrs["latency_fp32"]["precision"] == "fp32"
    )
    assert (trial_dir(outcome.run_dir, trial.number) / STUDENT_WEIGHTS).exists()


@pytest.mark.usefixtures("clean_registry")
def test_raising_trial_is_failed_with_its_message_and_the_study_goes_on(
    tiny_study, shared_runs, tmp_path, raising_plugin
):
    tiny_study.update(name="raising", plugins=[raising_plugin])
    tiny_study["search_space"]["methods"] = ["explode", "hinton_kd"]
    tiny_study["budget"]["max_consecutive_failures"] = 50
    study_path = write_study(tmp_path, tiny_study)
    outcome = run_search(
        parse_study(tiny_study),
        runs_root=shared_runs,
        study_path=study_path,
        log=lambda _: None,
        progress=False,
    )
    trials = trials_of(outcome.run_dir, "raising")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the random sampler should have drawn the raising plugin at least once"
    assert all(
        "plugin 'explode' raised RuntimeError: boom from the plugin" in t.user_attrs["error"] for t in failed
    )
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


@pytest.mark.usefixtures("clean_registry")
def test_consecutive_failures_stop_the_study(tiny_study, shared_runs, tmp_path, raising_plugin):
    tiny_study.update(name="all-failing", plugins=[raising_plugin])
    tiny_study["search_space"]["methods"] = ["explode"]
    tiny_study["budget"]["max_consecutive_failures"] = 2
    study_path = write_study(tmp_path, tiny_study)
    outcome = run_search(
        parse_study(tiny_study),
        runs_root=shared_runs,
        study_path=study_path,
        log=lambda _: None,
        progress=False,
    )
    assert outcome.completed == 0 and outcome.stopped_reason == "2 consecutive failed trials"


def _count(run_dir: Path, name: str, state: TrialState) -> int:
    if not (run_dir / JOURNAL).exists():
        return 0
    try:
        return sum(t.state == state for t in trials_of(run_dir, name))
    except KeyError:  # study not created yet
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_keeps_completed_and_fails_the_killed_trial(tiny_study, shared_runs, tmp_path):
    tiny_study["name"] = "killed"
    tiny_study["budget"]["trials"] = 3
    study_path = write_study(tmp_path, tiny_study)
    run_dir = shared_runs / "killed"
    command = [
        sys.executable,
        "-m",
        "autokd.cli",
        "search",
        str(study_path),
        "--runs-dir",
        str(shared_runs),
        "--reports-dir",
        str(tmp_path / "reports"),
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Kill it while a trial runs after at least one has completed.
        while not (
            _count(run_dir, "killed", TrialState.COMPLETE) >= 1
            and _count(run_dir, "killed", TrialState.RUNNING) == 1
        ):
            assert process.poll() is None, "the search finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    completed_before = _count(run_dir, "killed", TrialState.COMPLETE)
    assert _count(run_dir, "killed", TrialState.RUNNING) == 1

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    trials = trials_of(run_dir, "killed")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not any(t.state == TrialState.RUNNING for t in trials)
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and "killed" in killed[0].user_attrs["error"]
    assert completed_before >= 1 and "interrupted trial(s) marked FAILED" in result.stdout


def test_rerunning_a_finished_study_runs_no_new_trial(tiny_study, shared_runs):
    tiny_study["name"] = "finished"
    tiny_study["budget"]["trials"] = 1
    study = parse_study(tiny_study)
    run_search(study, runs_root=shared_runs, log=lambda _: None, progress=False)
    run_search(study, runs_root=shared_runs, log=lambda _: None, progress=False)
    assert len(trials_of(shared_runs / "finished", "finished")) == 1


def _add_completed(ctx, values, history, family="resnet"):
    # The same choices as the study's, or Optuna refuses the next suggest_categorical("family", ...).
    choices = ctx.study.search_space.families
    ctx.optuna_study.add_trial(
        optuna.trial.create_trial(
            values=values,
            params={"family": family},
            distributions={"family": optuna.distributions.CategoricalDistribution(choices)},
            user_attrs={"val_accuracy_per_epoch": history, "retention": values[0]},
        )
    )


def test_trial_below_the_median_is_pruned_with_its_epoch(tiny_study, shared_runs):
    from autokd.search import prepare_search, run_one_trial

    tiny_study["name"] = "early-stop"
    tiny_study["budget"]["epochs"] = 3
    tiny_study["early_stopping"] = {"warmup_epochs": 1, "min_completed_trials": 1}
    tiny_study["search_space"]["families"] = ["resnet"]
    ctx = prepare_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None)
    _add_completed(ctx, [0.9, 10.0, 1.0], [1.0, 1.0, 1.0])  # nobody beats a perfect median
    assert run_one_trial(ctx, log=lambda _: None) == TrialState.PRUNED
    pruned = ctx.optuna_study.get_trials(states=(TrialState.PRUNED,))[0]
    assert (
        pruned.user_attrs["stopped_at_epoch"] == 2 and len(pruned.user_attrs["val_accuracy_per_epoch"]) == 2
    )
    assert pruned.user_attrs["seconds_saved"] > 0


def test_trial_is_only_compared_with_its_own_family(tiny_study, shared_runs):
    from autokd.early_stopping import TrialStopped
    from autokd.search import _epoch_rule, prepare_search
    from autokd.trial import TrialConfig

    tiny_study["name"] = "early-stop-family"
    tiny_study["early_stopping"] = {"warmup_epochs": 1, "min_completed_trials": 1}
    ctx = prepare_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None)
    _add_completed(ctx, [0.9, 10.0, 1.0], [1.0, 1.0, 1.0], family="convnext")
    _epoch_rule(ctx, TrialConfig("resnet", 0.25, 0.5, epochs=3), [])(2, 0.5)  # no resnet to compare with
    with pytest.raises(TrialStopped):
        _epoch_rule(ctx, TrialConfig("convnext", 0.25, 0.5, epochs=3), [])(2, 0.5)


def test_prescreen_skips_a_student_dominated_on_size_and_latency(tiny_study, shared_runs):
    from autokd.search import prepare_search, run_one_trial

    tiny_study.update(name="prescreen", prescreen=True)
    ctx = prepare_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None)
    _add_completed(ctx, [0.99, 1e9, 1e-6], [0.9])  # above the floor, infinitely small and fast
    assert run_one_trial(ctx, log=lambda _: None) == TrialState.PRUNED
    skipped = ctx.optuna_study.get_trials(states=(TrialState.PRUNED,))[0]
    assert skipped.user_attrs["prescreened"]["dominated_by"] == 0
    assert "val_accuracy_per_epoch" not in skipped.user_attrs


def test_prescreen_trains_a_student_nobody_dominates(tiny_study, shared_runs):
    from autokd.search import prepare_search, run_one_trial

    tiny_study.update(name="prescreen-pass", prescreen=True)
    ctx = prepare_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None)
    _add_completed(ctx, [0.99, 1.0, 1e6], [0.9])  # huge and slow: dominates nothing
    assert run_one_trial(ctx, log=lambda _: None) == TrialState.COMPLETE


def test_qat_is_a_searchable_choice(tiny_study):
    tiny_study["quantization"].update(qat=[False, True], qat_epochs=1)
    tiny_study["budget"]["epochs"] = 2
    study = parse_study(tiny_study)
    fixed = {"family": "resnet", "width": 0.2, "depth": 0.5, "method": "hinton_kd"}
    fixed.update(temperature=2.0, loss_weight=1.0)
    configs = [sample_config(optuna.trial.FixedTrial({**fixed, "qat": qat}), study) for qat in (False, True)]
    assert [c.qat for c in configs] == [False, True] and configs[1].qat_epochs == 1


@pytest.mark.parametrize(
    ("image_size", "choice", "stem"),
    [(32, "auto", "small"), (96, "auto", "imagenet"), (32, "imagenet", "imagenet")],
)
def test_a_sampled_student_gets_the_stem_for_the_studys_images(tiny_study, image_size, choice, stem):
    tiny_study["data"]["image_size"] = image_size
    tiny_study["search_space"]["stem"] = choice
    fixed = {"family": "resnet", "width": 0.2, "depth": 0.5, "method": "hinton_kd", "temperature": 2.0}
    config = sample_config(optuna.trial.FixedTrial({**fixed, "loss_weight": 1.0}), parse_study(tiny_study))
    assert config.stem == stem


def test_a_config_stored_before_the_stem_choice_rebuilds_with_the_imagenet_stem():
    stored = asdict(TrialConfig("resnet", 0.25, 0.5))
    del stored["stem"]
    assert TrialConfig.from_dict(stored).stem == "imagenet"


@pytest.mark.slow
def test_a_qat_trial_trains_its_last_epoch_quantization_aware(tiny_study, shared_runs):
    tiny_study["name"] = "qat"
    tiny_study["budget"].update(trials=1, epochs=2)
    tiny_study["quantization"].update(qat=True, qat_epochs=1)
    outcome = run_search(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None, progress=False)
    trial = trials_of(outcome.run_dir, "qat")[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["qat"] is True
    assert len(trial.user_attrs["val_accuracy_per_epoch"]) == 2
    assert trial.user_attrs["retention_fp32"] > 0.5
