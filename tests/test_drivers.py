"""What a search does, the same on both backends: each test runs on Optuna and on Ray Tune."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

import autokd
from autokd.budget import StopReason
from autokd.config import EarlyStoppingSection
from autokd.runner import TrialRunner
from autokd.storage import journal_storage, trial_dir
from autokd.trial import STUDENT_WEIGHTS, TrialConfig

pytestmark = pytest.mark.slow

RAISING_METHOD = '''
from autokd.methods import Method, register_method

@register_method("explode")
class Explode(Method):
    """Response method that always raises (for tests)."""
    kind = "response"

    def forward(self, inputs):
        raise RuntimeError("boom from the method")
'''


@pytest.fixture(scope="module")
def raising_method(tmp_path_factory) -> str:
    """One method file for the module: registering 'explode' from two files would be a name clash."""
    path = tmp_path_factory.mktemp("extensions") / "explode.py"
    path.write_text(RAISING_METHOD)
    return str(path)


def _named(tiny_study: dict, search_with, name: str) -> dict:
    tiny_study["name"] = f"{name}-{search_with.backend}"
    return tiny_study


def _seed_completed(run_dir, name: str, trials: list[tuple[list[float], list[float]]], families: list[str]):
    """Create the study with already-completed trials (values, validation history) of family resnet."""
    study = optuna.create_study(
        study_name=name, storage=journal_storage(run_dir), directions=["maximize", "maximize", "minimize"]
    )
    for values, history in trials:
        study.add_trial(
            optuna.trial.create_trial(
                values=values,
                params={"family": "resnet"},
                distributions={"family": optuna.distributions.CategoricalDistribution(families)},
                user_attrs={"val_accuracy_per_epoch": history, "retention": values[0]},
            )
        )


def test_completed_trials_store_objectives_settings_and_the_student(tiny_study, shared_runs, search_with):
    result = search_with(_named(tiny_study, search_with, "stores"), runs_dir=shared_runs)
    assert result.completed == 2 and result.stopped_reason == StopReason.BUDGET
    record = next(t for t in result.records.trials if t.completed)
    assert {"family", "width", "depth", "method", "distillation_share", "hinton_kd.temperature"} <= set(
        record.params
    )
    assert record.result.retention == pytest.approx(
        record.result.int8_accuracy / result.records.teacher["test_accuracy"]
    )
    assert record.result.backend == record.result.runtime == "onnxruntime"
    assert record.config["family"] == record.params["family"]
    assert (trial_dir(result.run_dir, record.number) / STUDENT_WEIGHTS).exists()


def test_the_study_names_its_three_objectives(tiny_study, shared_runs, search_with):
    tiny_study["budget"]["trials"] = 1
    result = search_with(_named(tiny_study, search_with, "named"), runs_dir=shared_runs)
    study = optuna.load_study(study_name=result.name, storage=journal_storage(result.run_dir))
    assert study.metric_names == ["retention", "compression", "latency_ms"]


@pytest.mark.usefixtures("clean_registry")
def test_a_raising_trial_is_failed_with_its_message_and_the_study_goes_on(
    tiny_study, shared_runs, search_with, raising_method
):
    study = _named(tiny_study, search_with, "raising")
    study["extensions"] = [raising_method]
    study["search_space"]["methods"] = ["explode", "hinton_kd"]
    study["budget"]["max_consecutive_failures"] = 50
    result = search_with(study, runs_dir=shared_runs)
    failed = [t for t in result.records.trials if t.state == "FAIL"]
    assert failed, "the random sampler should have drawn the raising method at least once"
    assert all("method 'explode' raised RuntimeError: boom from the method" in t.error for t in failed)
    assert result.completed == 2


@pytest.mark.usefixtures("clean_registry")
def test_consecutive_failures_stop_the_study(tiny_study, shared_runs, search_with, raising_method):
    study = _named(tiny_study, search_with, "all-failing")
    study["extensions"] = [raising_method]
    study["search_space"].update(methods=["explode"], method_params={})
    study["budget"]["max_consecutive_failures"] = 2
    result = search_with(study, runs_dir=shared_runs)
    assert result.completed == 0 and result.stopped_reason == StopReason.FAILURES
    assert sum(t.state == "FAIL" for t in result.records.trials) >= 2


def test_a_trial_below_the_median_is_stopped_recorded_pruned_and_reported(
    tiny_study, shared_runs, search_with, tmp_path, tiny_resources
):
    # tiny_resources: the teacher is trained before the search, so its training does not eat the
    # 15-second time limit (on a busy machine it did, and no trial started)
    study = _named(tiny_study, search_with, "early-stop")
    study["search_space"]["families"] = ["resnet"]
    study["budget"].update(trials=3, epochs=3, time_limit_minutes=0.25)
    study["early_stopping"] = {"warmup_epochs": 1, "min_completed_trials": 2}
    # two perfect students: nobody beats their median, so every new trial stops after epoch 2
    _seed_completed(
        shared_runs / study["name"], study["name"], [([0.9, 10.0, 1.0], [1.0] * 3)] * 2, ["resnet"]
    )
    result = search_with(study, runs_dir=shared_runs)
    stopped = [t for t in result.records.trials if t.stop is not None]
    assert stopped and all(t.state == "PRUNED" for t in stopped)
    assert {t.stop.epoch for t in stopped} == {2} and all(t.stop.seconds_saved > 0 for t in stopped)
    assert all(len(t.stop.val_accuracy_per_epoch) == 2 for t in stopped)
    assert result.stopped_reason == StopReason.TIME_LIMIT
    assert not result.front["trial"].isin([t.number for t in stopped]).any()
    summary = (autokd.report(result.run_dir, tmp_path) / "summary.md").read_text()
    assert f"{len(stopped)} trial(s) stopped" in summary


def test_the_prescreen_skips_a_student_that_cannot_extend_the_front(
    tiny_study, shared_runs, search_with, tiny_resources
):
    # tiny_resources: the teacher is trained first, so the 15-second time limit is all prescreening
    # (on a busy machine the teacher's training used it up and no student was prescreened)
    study = _named(tiny_study, search_with, "prescreen")
    study["prescreen"] = True
    study["budget"].update(trials=3, time_limit_minutes=0.25)
    # Trial 0 is as large as the teacher and retains 0.7, so no sampled student is bounded above
    # 0.705; trial 1 is infinitely small and fast at 0.99: every sampled student is dominated.
    _seed_completed(
        shared_runs / study["name"],
        study["name"],
        [([0.7, 1.0, 1e-6], [0.5]), ([0.99, 1e9, 1e-6], [0.9])],
        ["resnet", "convnext"],
    )
    result = search_with(study, runs_dir=shared_runs)
    skipped = [t for t in result.records.trials if t.prescreened is not None]
    assert skipped and all(t.state == "PRUNED" and t.prescreened["dominated_by"] == 1 for t in skipped)
    assert all(t.prescreened["retention_bound"] == pytest.approx(0.705) for t in skipped)
    assert all("train_seconds" not in t.attrs for t in skipped)
    assert result.completed == 2  # only the seeded trials: skipped ones never count


def test_rerunning_a_finished_study_runs_no_new_trial(tiny_study, shared_runs, search_with):
    study = _named(tiny_study, search_with, "finished")
    study["budget"]["trials"] = 1
    search_with(study, runs_dir=shared_runs)
    again = search_with(study, runs_dir=shared_runs)
    assert len(again.records.trials) == 1 and again.stopped_reason == StopReason.BUDGET


def test_a_search_leaves_torch_threads_and_optuna_logging_as_it_found_them(
    tiny_study, shared_runs, search_with
):
    import torch

    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    tiny_study["budget"]["trials"] = 1
    tiny_study["training"]["threads"] = 1 if threads != 1 else 2
    search_with(_named(tiny_study, search_with, "no-state"), runs_dir=shared_runs)
    assert (torch.get_num_threads(), optuna.logging.get_verbosity()) == (threads, verbosity)


def test_trials_are_numbered_in_the_study_and_name_their_worker(tiny_study, shared_runs, search_with):
    tiny_study["budget"]["trials"] = 2
    result = search_with(_named(tiny_study, search_with, "numbered"), runs_dir=shared_runs)
    assert [t.number for t in result.records.trials] == [0, 1]
    assert all(t.worker for t in result.records.trials)
    assert sorted(p.name for p in (result.run_dir / "trials").iterdir()) == ["0", "1"]


def _runner_with_completed(tiny_resources, parameters: int):
    """A runner whose study holds two completed resnet students of ``parameters``, perfect at every epoch."""
    rule = EarlyStoppingSection(enabled=True, warmup_epochs=1, min_completed_trials=2)
    study = tiny_resources.study.model_copy(update={"early_stopping": rule})
    optuna_study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for _ in range(2):
        optuna_study.add_trial(
            optuna.trial.create_trial(
                values=[0.9, 10.0, 1.0],
                params={"family": "resnet"},
                distributions={"family": optuna.distributions.CategoricalDistribution(["resnet"])},
                user_attrs={"val_accuracy_per_epoch": [1.0] * 3, "parameters": parameters},
            )
        )
    return TrialRunner(dataclasses.replace(tiny_resources, study=study), optuna_study, emit=lambda _: None)


def test_a_student_below_the_median_of_larger_completed_ones_is_not_stopped(tiny_resources):
    runner = _runner_with_completed(tiny_resources, parameters=10**9)
    config = TrialConfig(family="resnet", width=0.125, depth=0.5, stem="small", epochs=3)
    assert runner.early_stop(config, [0.5, 0.5], 1.0) is None


def test_a_student_below_the_median_of_completed_ones_no_larger_is_stopped(tiny_resources):
    runner = _runner_with_completed(tiny_resources, parameters=1)
    config = TrialConfig(family="resnet", width=0.125, depth=0.5, stem="small", epochs=3)
    assert runner.early_stop(config, [0.5, 0.5], 1.0).epoch == 2
