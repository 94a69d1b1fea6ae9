"""The Ray Tune backend: the same study file and the same trial function, on a Ray cluster.

Nothing in autokd imports this module unless ``--backend ray`` asks for it, so Ray stays optional.

- ``ray.tune.Tuner`` runs :func:`ray_trial`, a thin wrapper of :func:`autokd.trial.run_trial` that
  reports each epoch's validation accuracy (for ASHA) and, last, every metric of the trial.
- Sampling is Optuna's, through :class:`BudgetedOptunaSearch` (OptunaSearch with the study's three
  objectives) on an in-memory study named after the autokd study: never OptunaSearch's default
  "optuna", which ``load_if_exists`` would merge with unrelated experiments.
- The driver writes each finished Ray trial into the run folder's journal (:class:`JournalRecorder`)
  with the parameters and user attributes the Optuna backend writes, so ``autokd report`` reads a
  Ray run unchanged. A trial ASHA stopped is recorded PRUNED: Tune hands it over as done, and plain
  OptunaSearch would tell Optuna it COMPLETEd with the metrics of the epoch it reached.
- The teacher and its output cache are built once by the driver (:func:`autokd.search.prepare_resources`)
  and put in Ray's object store, from which every trial on every node reads them; no trial trains the
  teacher or recomputes its cached outputs.
- Early stopping is ASHA on validation top-1 (grace period ``early_stopping.warmup_epochs + 1``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from autokd.config import Study
from autokd.data import DataSplits
from autokd.methods import load_methods
from autokd.measure import machine_latency_lock
from autokd.pareto import DIRECTIONS, OBJECTIVES
from autokd.search import (
    BackendUnavailableError,
    SearchOutcome,
    make_sampler,
    objective_values,
    open_optuna_study,
    prepare_resources,
    record_execution,
    sample_config,
    trial_dir,
    trial_line,
)
from autokd.storage import StorageLocation
from autokd.trial import TeacherReference, TrialConfig, run_trial

try:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise BackendUnavailableError(
        f"the ray backend needs Ray Tune ({exc.name} is missing): pip install 'autokd[ray]'"
    ) from None

# Keys of the config Tune hands to a trial, and of the results a trial reports.
SAMPLER_TRIAL = "sampler_trial"  # number of the trial in the in-memory sampling study
TRIAL_CONFIG = "trial_config"  # the TrialConfig, as JSON (Tune's loggers mangle nested tuples)
FINAL = "final"  # present (True) only in a trial's last report: it ran to the end
TRIAL_METRICS = "trial_metrics"  # every metric of run_trial, as JSON (nested values intact)
VAL_ACCURACY = "val_accuracy"
MODES = ["max" if direction == "maximize" else "min" for direction in DIRECTIONS]


def staged_artifacts(run_dir: Path, ray_trial_id: str) -> Path:
    """Where a Ray trial writes its student and artifact until the journal gives it a trial number."""
    return trial_dir(run_dir, 0).parent / f"ray-{ray_trial_id}"


def trial_outcome(result: dict | None, errored: bool) -> TrialState:
    """How a finished Ray trial is recorded: FAIL, COMPLETE, or PRUNED when stopped before the end.

    Tune marks every trial it stops as done, the ones a scheduler cut short included; only a trial
    whose last report is its final one has real objectives.
    """
    if errored or (result is not None and "error" in result):
        return TrialState.FAIL
    if result is not None and result.get(FINAL):
        return TrialState.COMPLETE
    return TrialState.PRUNED


def ray_trial(
    config: dict,
    data: DataSplits | None = None,
    teacher: TeacherReference | None = None,
    plugin_paths: tuple[str, ...] = (),
    threads: int = 1,
    run_dir: str | None = None,
) -> None:
    """One Tune trial: :func:`run_trial` with validation accuracy reported after each epoch but the
    last (for ASHA), then every metric in one final report.

    The last epoch is not reported on its own: stopping a trial whose training is over would save
    nothing but its quantization, and lose a student that may still be on the front by size or speed.
    A failure is reported as a result with ``error`` (the Optuna backend's message), not raised, so
    the journal gets the same one-line error either way.
    """
    torch.set_num_threads(threads)
    assert data is not None and teacher is not None, "pass data and teacher with tune.with_parameters"
    trial_config = TrialConfig.from_dict(json.loads(config[TRIAL_CONFIG]))

    def on_epoch(epoch: int, val_accuracy: float) -> None:
        if epoch < trial_config.epochs:
            tune.report({VAL_ACCURACY: val_accuracy, "epoch": epoch})

    try:
        load_methods(plugin_paths)  # registries are per process (loading twice is a no-op)
        result = run_trial(
            trial_config,
            data,
            teacher,
            on_epoch=on_epoch,
            latency_lock=machine_latency_lock(),  # this node's lock: latency is about its cores
            # the recorder renames it to the trial's number in the journal (known only there)
            artifact_dir=staged_artifacts(Path(run_dir), tune.get_context().get_trial_id())
            if run_dir
            else None,
        )
    except Exception as exc:
        tune.report({"error": f"{type(exc).__name__}: {exc}"})
        return
    tune.report(
        {**{name: result[name] for name in OBJECTIVES}, TRIAL_METRICS: json.dumps(result), FINAL: True}
    )


class SampledConfig:
    """OptunaSearch's define-by-run space: autokd's own sampling, plus what a trial needs to run.

    A class rather than a closure, because Tune pickles the searcher with its experiment state.
    """

    def __init__(self, study: Study) -> None:
        self.study = study

    def __call__(self, trial: optuna.Trial) -> dict:
        config = sample_config(trial, self.study)
        return {SAMPLER_TRIAL: trial.number, TRIAL_CONFIG: json.dumps(asdict(config))}


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch with autokd's budget rules and the ASHA trap handled.

    - The budget counts completed trials: no trial is suggested while completed plus running trials
      reach it (a pruned or failed trial frees its place), and none after the deadline or after
      ``max_consecutive_failures`` failed trials in a row (running ones finish).
    - A trial stopped before its final report is told to Optuna as PRUNED, a failed one as FAIL:
      OptunaSearch itself would tell COMPLETE with whatever metrics the last report carried.
    """

    def __init__(
        self,
        *,
        space: Callable[[optuna.Trial], dict],
        study: Study,
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage,
        completed: int = 0,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            space=space,
            metric=list(OBJECTIVES),
            mode=MODES,
            sampler=sampler,
            study_name=study.name,
            storage=storage,
        )
        self.budget = study.budget.trials
        self.max_consecutive_failures = study.budget.max_consecutive_failures
        self.deadline = deadline
        self.completed = completed
        self.consecutive_failures = 0
        self.running: set[str] = set()
        self.stopped_reason: str | None = None

    def _stop_reason(self) -> str | None:
        if self.completed >= self.budget:
            return "budget"
        if self.consecutive_failures >= self.max_consecutive_failures:
            return f"{self.consecutive_failures} consecutive failed trials"
        if self.deadline is not None and time.time() > self.deadline:
            return "time limit"
        return None

    def suggest(self, trial_id: str) -> dict | str | None:
        """A new trial's config; None to be asked again later; FINISHED when the search is over."""
        reason = self._stop_reason()
        if reason is not None:
            self.stopped_reason = reason
            return Searcher.FINISHED
        if self.completed + len(self.running) >= self.budget:
            return None
        config = super().suggest(trial_id)
        self.running.add(trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial really ended, and count it."""
        self.running.discard(trial_id)
        state = trial_outcome(result, error)
        if state == TrialState.COMPLETE:
            self.completed += 1
            self.consecutive_failures = 0
            super().on_trial_complete(trial_id, result, error)
            return
        if state == TrialState.FAIL:
            self.consecutive_failures += 1
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


class JournalRecorder(tune.Callback):
    """Writes each finished Ray trial into the autokd study, in the Optuna backend's format.

    Same parameters (with their distributions, from the sampling study), the trial's metrics as user
    attributes, ``error`` on failures; a stopped trial is PRUNED with ``stopped_at_epoch`` and its
    validation accuracies, so the report never puts it on the front.
    """

    def __init__(
        self,
        journal_study: optuna.Study,
        sampler_study: optuna.Study,
        emit: Callable[[str], None],
        run_dir: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.journal_study = journal_study
        self.sampler_study = sampler_study
        self.emit = emit
        self.started: dict[str, datetime.datetime] = {}
        self.val_history: dict[str, list[float]] = defaultdict(list)
        self.failed = 0

    def __getstate__(self) -> dict:
        # The Tuner pickles its callbacks into the experiment state; a recorder is bound to this
        # driver's study and output and is never restored from there, so it pickles as nothing.
        return {}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.started[trial.trial_id] = datetime.datetime.now()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if VAL_ACCURACY in result:
            self.val_history[trial.trial_id].append(result[VAL_ACCURACY])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, errored=True)

    def _record(self, trial, *, errored: bool) -> None:
        result = trial.last_result or {}
        state = trial_outcome(result, errored)
        sampled = self.sampler_study.get_trials(deepcopy=False)[trial.config[SAMPLER_TRIAL]]
        history = self.val_history.pop(trial.trial_id, [])
        attrs: dict = {"worker": f"ray:{trial.trial_id}"}
        values = None
        if state == TrialState.COMPLETE:
            metrics = json.loads(result[TRIAL_METRICS])
            attrs.update(metrics)
            values = objective_values(metrics)
        else:
            attrs.update(config=json.loads(trial.config[TRIAL_CONFIG]), val_accuracy_per_epoch=history)
            if state == TrialState.PRUNED:
                attrs.update(stopped_at_epoch=len(history), stopped_by="ASHA on validation accuracy")
            else:
                attrs["error"] = result.get("error") or _ray_error(trial)
                self.failed += 1
        frozen = optuna.trial.create_trial(
            state=state,
            values=values,
            params=sampled.params,
            distributions=sampled.distributions,
            user_attrs=attrs,
        )
        frozen.datetime_start = self.started.pop(trial.trial_id, frozen.datetime_start)
        self.journal_study.add_trial(frozen)
        number = self.journal_study.get_trials(deepcopy=False)[-1].number
        self._place_artifacts(trial.trial_id, number, keep=state == TrialState.COMPLETE)
        if state == TrialState.COMPLETE:
            self.emit(trial_line(number, attrs))
        elif state == TrialState.PRUNED:
            reached = f"val accuracy {history[-1]:.3f}" if history else "no epoch reported"
            self.emit(f"trial {number:>3}: PRUNED by ASHA after epoch {len(history)} ({reached})")
        else:
            self.emit(f"trial {number:>3}: FAILED ({attrs['error']})")

    def _place_artifacts(self, ray_trial_id: str, number: int, *, keep: bool) -> None:
        if self.run_dir is None:
            return
        staged = staged_artifacts(self.run_dir, ray_trial_id)
        if not staged.exists():
            return
        if keep:
            target = trial_dir(self.run_dir, number)
            shutil.rmtree(target, ignore_errors=True)  # a leftover of an earlier, interrupted run
            staged.rename(target)
        else:
            shutil.rmtree(staged, ignore_errors=True)


def _ray_error(trial) -> str:
    """One line for a trial Ray itself reports as errored (its worker died, for example)."""
    error = trial.get_error()
    last_line = str(error).strip().splitlines()[-1] if error is not None else "no error message"
    return f"the Ray trial errored: {last_line}"


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the Ray cluster at ``address``, or start Ray on this machine; leave (or stop it) at the end."""
    if address is None:
        # "local" starts a new Ray; without it ray.init joins whatever cluster /tmp/ray last recorded.
        ray.init(address="local", include_dashboard=False)
    else:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _objectives_only_in_final_report() -> Iterator[None]:
    # Tune checks that every result carries the searcher's metrics; ours reach Tune only in a trial's
    # last report, on purpose (epoch reports carrying them are how the ASHA trap starts).
    name = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name)
        else:
            os.environ[name] = previous


def _scheduler(study: Study) -> TrialScheduler:
    rule = study.early_stopping
    if not rule.enabled:
        return FIFOScheduler()
    epochs = study.budget.epochs
    # Trials report validation accuracy for epochs 1 .. epochs-1 only (see ray_trial), so ASHA never
    # cuts a finished training; stop_last_trials=False: reaching max_t is no reason to stop either.
    return ASHAScheduler(
        metric=VAL_ACCURACY,
        mode="max",
        max_t=epochs,
        grace_period=min(rule.warmup_epochs + 1, epochs),
        reduction_factor=rule.reduction_factor,
        stop_last_trials=False,
    )


def tune_study(
    study: Study,
    journal_study: optuna.Study,
    trainable,
    *,
    ray_dir: Path,
    deadline: float | None = None,
    emit: Callable[[str], None] = print,
) -> tuple[int, str]:
    """Run ``trainable`` through ray.tune.Tuner until the study's budget is complete, recording every
    finished trial into ``journal_study``; return (trials failed, why it stopped).

    Needs a connected Ray (see :func:`ray_session`). The trainable takes the Tune config (with
    ``trial_config``) and reports like :func:`ray_trial`.
    """
    finished = journal_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    sampler_storage = optuna.storages.InMemoryStorage()
    sampler_study = optuna.create_study(
        storage=sampler_storage, study_name=study.name, directions=list(DIRECTIONS)
    )
    sampler_study.add_trials(finished)  # a resumed run samples knowing what is already known

    searcher = BudgetedOptunaSearch(
        space=SampledConfig(study),
        study=study,
        sampler=make_sampler(study, offset=len(journal_study.get_trials(deepcopy=False))),
        storage=sampler_storage,
        completed=sum(t.state == TrialState.COMPLETE for t in finished),
        deadline=deadline,
    )
    recorder = JournalRecorder(journal_study, sampler_study, emit, run_dir=ray_dir.parent)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(study),
            num_samples=-1,  # the searcher ends the search: it counts completed trials, not started ones
            max_concurrent_trials=study.parallel.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{study.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}",
            storage_path=str(ray_dir.resolve()),
            verbose=0,
            callbacks=[recorder],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with _objectives_only_in_final_report():
        tuner.fit()
    return recorder.failed, searcher.stopped_reason or "interrupted"


def run_ray_search(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> SearchOutcome:
    """Run (or resume) ``study`` on Ray: on the cluster at ``address``, or on a Ray started locally."""
    start = time.time()
    deadline = start + study.budget.time_limit_minutes * 60 if study.budget.time_limit_minutes else None
    prepared = prepare_resources(study, runs_root=runs_root, study_path=study_path, log=log)
    journal_study = open_optuna_study(prepared, StorageLocation(prepared.run_dir), log=log)
    parallel = study.parallel
    record_execution(
        journal_study,
        backend="ray",
        concurrent_trials=parallel.max_concurrent_trials,
        cpus_per_trial=parallel.cpus_per_trial,
        gpus_per_trial=parallel.gpus_per_trial,
        early_stopping="asha" if study.early_stopping.enabled else "none",
        address=address or "local",
    )
    completed = len(journal_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if completed:
        log(f"resuming '{study.name}': {completed}/{study.budget.trials} trials already complete")
    with ray_session(address):
        # with_parameters puts data and teacher in the object store once; every trial reads them there.
        trainable = tune.with_resources(
            tune.with_parameters(
                ray_trial,
                data=prepared.data,
                teacher=prepared.teacher_reference(),
                plugin_paths=tuple(str(path) for path in prepared.plugin_paths),
                threads=study.training.threads or max(1, int(parallel.cpus_per_trial)),
                run_dir=str(prepared.run_dir.resolve()),
            ),
            {"cpu": parallel.cpus_per_trial, "gpu": parallel.gpus_per_trial},
        )
        log(
            f"ray: up to {parallel.max_concurrent_trials} concurrent trials, {parallel.cpus_per_trial:g} CPU "
            f"and {parallel.gpus_per_trial:g} GPU each, early stopping: "
            f"{'ASHA' if study.early_stopping.enabled else 'off'}"
        )
        failed_now, reason = tune_study(
            study, journal_study, trainable, ray_dir=prepared.run_dir / "ray", deadline=deadline, emit=log
        )
    return SearchOutcome(
        run_dir=prepared.run_dir,
        completed=len(journal_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        failed_now=failed_now,
        stopped_reason=reason,
    )
