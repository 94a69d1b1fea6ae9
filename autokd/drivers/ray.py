"""The Ray Tune driver: the same study, the same trials and the same rules, with trials run by Ray.

Nothing in autokd imports this module unless ``backend="ray"`` asks for it, so Ray stays optional.

- :class:`StudySearcher` is a Tune ``Searcher`` over the study itself: it asks the study for a trial,
  lets :class:`autokd.runner.TrialRunner` sample (and pre-screen) it, and tells the study how it
  ended. Trial numbers, parameters and stored results are exactly the Optuna driver's, and the
  budget is :class:`autokd.budget.Budget`.
- :class:`MedianStopping` is a Tune scheduler applying the runner's early-stopping rule to the
  validation accuracies a trial reports after each epoch; a stopped trial is recorded PRUNED.
- The teacher and its output cache are built once by the driver and put in Ray's object store, from
  which every trial on every node reads them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autokd.budget import Budget, StopReason
from autokd.config import Study
from autokd.data import DataSplits
from autokd.devices import resolve_device
from autokd.drivers import BackendUnavailableError
from autokd.drivers.optuna import DriverOutcome
from autokd.measure import machine_latency_lock
from autokd.record import EarlyStop
from autokd.registry import load_extension_files
from autokd.resources import load_extensions, prepare_resources, quiet_optuna, torch_threads
from autokd.runner import (
    Outcome,
    ProposalFailed,
    TrialRunner,
    check_unchanged,
    completed_count,
    fail_dead_trials,
    open_study,
    record_end,
    record_execution,
    running_count,
)
from autokd.storage import StorageLocation, StudyOwner, trial_dir
from autokd.trial import TeacherReference, TrialConfig, TrialResult, run_trial

try:
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise BackendUnavailableError(
        f"the ray backend needs Ray Tune ({exc.name} is missing): pip install 'autokd[ray]'"
    ) from None

# Keys of the config Tune hands to a trial, and of the results a trial reports.
NUMBER = "number"  # the trial's number in the study
TRIAL_CONFIG = "trial_config"  # the TrialConfig, as JSON (Tune's loggers mangle nested tuples)
HISTORY = "val_accuracy_per_epoch"  # reported after every epoch but the last
SECONDS = "seconds"  # training time so far, with each epoch report
TRIAL_RESULT = "trial_result"  # the TrialResult as JSON, in the final report only
ERROR = "error"


def ray_trial(
    config: dict,
    data: DataSplits | None = None,
    teacher: TeacherReference | None = None,
    extension_paths: tuple[str, ...] = (),
    threads: int = 1,
    run_dir: str | None = None,
    device: str = "cpu",
    amp: bool = False,
    cpu_bf16: bool = False,
) -> None:
    """One Tune trial: :func:`autokd.trial.run_trial`, reporting its validation accuracies after each
    epoch but the last (for :class:`MedianStopping`) and then its result, or its error, once."""
    assert data is not None and teacher is not None, "pass data and teacher with tune.with_parameters"
    trial_config = TrialConfig.from_dict(json.loads(config[TRIAL_CONFIG]))
    history: list[float] = []
    started = time.perf_counter()

    def on_epoch(epoch: int, val_accuracy: float) -> None:
        history.append(val_accuracy)
        if epoch < trial_config.epochs:  # stopping a finished training would save nothing
            tune.report({HISTORY: list(history), SECONDS: time.perf_counter() - started})

    try:
        load_extension_files(extension_paths)  # registries are per process (loading twice is a no-op)
        # the GPU Ray gave this trial (gpus_per_trial) is the one CUDA shows it: cuda:0 here
        trial_device = resolve_device(device)
        teacher.model.to(trial_device)
        with torch_threads(threads):
            result = run_trial(
                trial_config,
                data,
                teacher,
                on_epoch=on_epoch,
                latency_lock=machine_latency_lock(),  # this node's lock: latency is about its cores
                artifact_dir=trial_dir(Path(run_dir), config[NUMBER]) if run_dir else None,
                device=str(trial_device),
                amp=amp,
                cpu_bf16=cpu_bf16,
            )
    except Exception as exc:  # noqa: BLE001 - reported, so the study records the same one-line error
        tune.report({ERROR: f"{type(exc).__name__}: {exc}"})
        return
    tune.report({TRIAL_RESULT: json.dumps(result.as_attrs())})


def outcome_of(result: dict | None, errored: bool, stop: EarlyStop | None, ray_error: str = "") -> Outcome:
    """How a finished Tune trial ended, from its last report."""
    result = result or {}
    if ERROR in result:
        return Outcome(TrialState.FAIL, error=result[ERROR])
    if errored:
        return Outcome(TrialState.FAIL, error=f"the Ray trial errored: {ray_error or 'no error message'}")
    if TRIAL_RESULT in result:
        return Outcome(TrialState.COMPLETE, result=TrialResult.from_attrs(json.loads(result[TRIAL_RESULT])))
    if stop is not None:
        return Outcome(TrialState.PRUNED, stop=stop)
    return Outcome(TrialState.FAIL, error="the Ray trial ended before its final report")


class StudySearcher(Searcher):
    """Tune's searcher over the study: ask → propose → (Tune runs it) → record and tell."""

    def __init__(self, runner: TrialRunner, budget: Budget) -> None:
        super().__init__()
        self.runner = runner
        self.budget = budget
        self.live: dict[str, tuple[optuna.Trial, TrialConfig]] = {}
        self.stops: dict[str, EarlyStop] = {}
        self.errors: dict[str, str] = {}
        self.stopped_reason: StopReason | None = None
        self.failed = 0

    def __getstate__(self) -> dict:
        # Tune pickles its searcher into the experiment state; this one is bound to the driver's open
        # study and is never restored from there (a rerun resumes from the study itself).
        return {}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: every trial's state is in the study, from which a rerun resumes."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""

    def suggest(self, trial_id: str) -> dict | str | None:
        """A new trial's config; None to be asked again later; FINISHED when the search is over."""
        study = self.runner.optuna_study
        while True:
            completed = completed_count(study)
            reason = self.budget.stop_reason(completed)
            if reason is not None:
                self.stopped_reason = reason
                return Searcher.FINISHED
            if not self.budget.may_start(completed, running_count(study)):
                return None
            self.runner.choose_candidate()
            trial = study.ask()
            try:
                config = self.runner.propose(trial)
            except ProposalFailed as exc:
                study.tell(trial, state=TrialState.FAIL)
                self.budget.count(failed=True)
                self.failed += 1
                self.runner.emit(f"trial {trial.number:>3}: {exc}")
                continue
            if config is None:  # skipped by the pre-screen: recorded, and never counted
                study.tell(trial, state=TrialState.PRUNED)
                self.budget.count(failed=False, skipped=True)
                continue
            self.live[trial_id] = (trial, config)
            return {NUMBER: trial.number, TRIAL_CONFIG: json.dumps(asdict(config))}

    def config_of(self, trial_id: str) -> TrialConfig | None:
        """The config of a running Tune trial."""
        entry = self.live.get(trial_id)
        return entry[1] if entry else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record how the trial ended and tell the study."""
        if trial_id not in self.live:
            return
        trial, config = self.live.pop(trial_id)
        outcome = outcome_of(result, error, self.stops.pop(trial_id, None), self.errors.pop(trial_id, ""))
        self.runner.finish(trial, config, outcome)
        failed = outcome.state == TrialState.FAIL
        self.budget.count(failed=failed)
        self.failed += failed


class MedianStopping(FIFOScheduler):
    """The runner's early-stopping rule as a Tune scheduler: STOP when it says the trial should stop."""

    def __init__(self, searcher: StudySearcher) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        config = self.searcher.config_of(trial.trial_id)
        if config is None or HISTORY not in result:
            return TrialScheduler.CONTINUE
        stop = self.searcher.runner.early_stop(config, list(result[HISTORY]), float(result[SECONDS]))
        if stop is None:
            return TrialScheduler.CONTINUE
        self.searcher.stops[trial.trial_id] = stop
        return TrialScheduler.STOP


class ErrorLines(tune.Callback):
    """Keeps the last line of a Ray-side error (a dead worker, say) for the trial's record."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def __getstate__(self) -> dict:
        return {}

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = trial.get_error()
        self.searcher.errors[trial.trial_id] = str(error).strip().splitlines()[-1] if error else ""


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


def tune_study(runner: TrialRunner, budget: Budget, trainable, *, ray_dir: Path) -> tuple[int, StopReason]:
    """Run ``trainable`` through ray.tune.Tuner until the study's budget is complete; return (trials
    failed, why it stopped). Needs a connected Ray (see :func:`ray_session`)."""
    study = runner.study
    searcher = StudySearcher(runner, budget)
    scheduler = MedianStopping(searcher) if study.early_stopping.enabled else FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1,  # the searcher ends the search: it counts completed trials, not started ones
            max_concurrent_trials=study.parallel.max_concurrent_trials,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{study.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}",
            storage_path=str(ray_dir.resolve()),
            verbose=0,
            callbacks=[ErrorLines(searcher)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()
    return searcher.failed, searcher.stopped_reason or StopReason.INTERRUPTED


def run(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> DriverOutcome:
    """Run (or resume) ``study`` on Ray: on the cluster at ``address``, or on a Ray started locally."""
    load_extensions(study, study_path)  # a study that cannot run is refused before its run folder exists
    budget = Budget.of(study)
    location = StorageLocation(runs_root / study.name)
    with quiet_optuna(), StudyOwner(location.run_dir, study.name):
        check_unchanged(study, location)
        started = time.monotonic()
        resources = prepare_resources(study, runs_root=runs_root, study_path=study_path, log=log)
        prepare_seconds = time.monotonic() - started
        optuna_study = open_study(resources, location, log=log)
        fail_dead_trials(optuna_study, location, log)
        parallel = study.parallel
        record_execution(
            optuna_study,
            backend="ray",
            concurrent_trials=parallel.max_concurrent_trials,
            cpus_per_trial=parallel.cpus_per_trial,
            gpus_per_trial=parallel.gpus_per_trial,
            early_stopping="median rule" if study.early_stopping.enabled else "off",
            address=address or "local",
        )
        done = completed_count(optuna_study)
        if done:
            log(f"resuming '{study.name}': {done}/{study.budget.trials} trials already complete")
        runner = TrialRunner(resources, optuna_study, emit=log)
        resources.teacher.model.cpu()  # each trial moves it to the device Ray gives it
        with ray_session(address):
            # with_parameters puts data and teacher in the object store once; every trial reads them there.
            trainable = tune.with_resources(
                tune.with_parameters(
                    ray_trial,
                    data=resources.data,
                    teacher=resources.teacher_reference(),
                    extension_paths=tuple(str(path) for path in resources.extension_paths),
                    threads=study.training.threads or max(1, int(parallel.cpus_per_trial)),
                    run_dir=str(resources.run_dir.resolve()),
                    device=study.training.device,
                    amp=study.training.amp,
                    cpu_bf16=study.training.cpu_bf16,
                ),
                {"cpu": parallel.cpus_per_trial, "gpu": parallel.gpus_per_trial},
            )
            log(
                f"ray: up to {parallel.max_concurrent_trials} concurrent trials, {parallel.cpus_per_trial:g} CPU "
                f"and {parallel.gpus_per_trial:g} GPU each, early stopping: "
                f"{'median rule' if study.early_stopping.enabled else 'off'}"
            )
            failed_now, reason = tune_study(runner, budget, trainable, ray_dir=resources.run_dir / "ray")
        record_end(
            optuna_study,
            reason,
            prepare_seconds=prepare_seconds,
            threads=study.training.threads or max(1, int(parallel.cpus_per_trial)),
            time_limit_minutes=study.budget.time_limit_minutes,
        )
        return DriverOutcome(resources.run_dir, completed_count(optuna_study), failed_now, reason)
