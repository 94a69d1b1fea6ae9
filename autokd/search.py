"""The Optuna orchestrator: samples trial configs, runs them, stores every metric in the study's storage.

The study lives in ``<runs>/<name>/optuna-journal.log`` (JournalStorage, file backend), so that
``optuna.load_study`` and optuna-dashboard open it; or in a PostgreSQL database that several machines
share (RDBStorage with heartbeats), copied into that journal when the search ends so that the report
reads it the same way. Running the same study again resumes it: trials a killed process left RUNNING
are marked FAILED, and the budget counts completed trials only.

One process runs trials one after another; ``workers=N`` runs N processes on the same storage, each
with the loop of :func:`run_trials`. The Ray backend shares :func:`prepare_resources`,
:func:`open_optuna_study`, :func:`record_execution` and :func:`sample_config` with this one.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from autokd.config import Study, StudyFileError
from autokd.data import DataSplits, load_splits
from autokd.methods import METHODS, load_methods
from autokd.early_stopping import TrialStopped, should_stop
from autokd.features import feature_stage_indices
from autokd.measure import MEASUREMENT_POLICY, latency_example, machine_latency_lock, measure_latency
from autokd.pareto import DIRECTIONS, OBJECTIVES
from autokd.quantize import BACKENDS
from autokd.storage import JOURNAL, StorageLocation, copy_to_journal, journal_storage
from autokd.students import FAMILIES, stem_for
from autokd.teacher import Teacher, augmentation_of, prepare_teacher
from autokd.teacher_cache import TeacherOutputs, build_teacher_outputs
from autokd.trial import TeacherReference, TrialConfig, measure_untrained, run_trial

__all__ = ["JOURNAL", "journal_storage", "prepare_search", "run_search", "sample_config", "trial_dir"]

NO_DISTILLATION = "none"
TRIALS_DIR = "trials"
# How often a worker that waits for the others' running trials looks at the study again.
WAIT_POLL_SECONDS = 1.0
# How long a machine joining a database study waits for the creating machine to store its attributes.
DESCRIBE_WAIT_SECONDS = 120.0


class BackendUnavailableError(RuntimeError):
    """An optional backend's packages are not installed; the message says what to install."""


def trial_dir(run_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its FP32 student weights and INT8 artifact."""
    return run_dir / TRIALS_DIR / str(number)


def worker_id() -> str:
    """This process, as trials record who ran them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def make_sampler(study: Study, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The explicitly configured sampler; ``offset`` shifts the seed so a resumed run draws new points."""
    seed = (study.seed + offset) % 2**32  # numpy's seed range
    kind = study.sampler.kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=study.sampler.startup_trials)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, study.sampler.startup_trials))
    return optuna.samplers.RandomSampler(seed=seed)


def methods_of(choice: str) -> tuple[str, ...]:
    """Plugins named by a search-space method entry: 'none', one name, or names joined by '+'."""
    return () if choice == NO_DISTILLATION else tuple(part.strip() for part in choice.split("+"))


def validate_against_registries(study: Study) -> None:
    """Check that every family, method and backend the study names exists (after plugins are loaded)."""
    for i, family in enumerate(study.search_space.families):
        if family not in FAMILIES:
            raise StudyFileError(
                f"field 'search_space.families.{i}' = {family!r}: unknown family; allowed: {', '.join(FAMILIES.names())}"
            )
    for i, choice in enumerate(study.search_space.methods):
        for name in methods_of(choice):
            if name not in METHODS:
                allowed = ", ".join([NO_DISTILLATION, *METHODS.names()])
                raise StudyFileError(
                    f"field 'search_space.methods.{i}' = {choice!r}: unknown method {name!r}; allowed: {allowed} "
                    "(combine with '+')"
                )
    if study.quantization.backend not in BACKENDS:
        raise StudyFileError(
            f"field 'quantization.backend' = {study.quantization.backend!r}: allowed: {', '.join(BACKENDS.names())}"
        )
    backend = BACKENDS.get(study.quantization.backend)
    for i, family in enumerate(study.search_space.families):
        if family in backend.unsupported_families:
            supported = [f for f in FAMILIES.names() if f not in backend.unsupported_families]
            raise StudyFileError(
                f"field 'search_space.families.{i}' = {family!r}: not supported by quantization backend "
                f"'{backend.name}' ({backend.unsupported_families[family]}); supported there: {', '.join(supported)}"
            )


def sample_config(trial: optuna.Trial, study: Study) -> TrialConfig:
    """Draw one trial's settings from the study's search space (define-by-run)."""
    space = study.search_space
    family = trial.suggest_categorical("family", space.families)
    width = trial.suggest_float("width", *space.width)
    depth = trial.suggest_float("depth", *space.depth)
    method = trial.suggest_categorical("method", space.methods)
    methods = methods_of(method)
    temperature = trial.suggest_float("temperature", *space.temperature) if methods else 1.0
    loss_weight = trial.suggest_float("loss_weight", *space.loss_weight, log=True) if methods else 0.0
    plugin_params = {}
    for name in methods:
        plugin_params[name] = {
            key: trial.suggest_float(f"{name}.{key}", spec.low, spec.high, log=spec.log)
            for key, spec in METHODS.get(name).hyperparameters.items()
        }
    qat_choices = study.quantization.qat_choices
    qat = trial.suggest_categorical("qat", qat_choices) if len(qat_choices) > 1 else qat_choices[0]
    return TrialConfig(
        family=family,
        width=width,
        depth=depth,
        stem=stem_for(family, study.data.image_size, space.stem),
        methods=methods,
        temperature=temperature,
        loss_weight=loss_weight,
        plugin_params=plugin_params,
        epochs=study.budget.epochs,
        batch_size=study.training.batch_size,
        lr=study.training.lr,
        weight_decay=study.training.weight_decay,
        seed=study.seed + trial.number,
        quantization_backend=study.quantization.backend,
        calibration_batches=study.quantization.calibration_batches,
        qat=qat,
        qat_epochs=study.quantization.qat_epochs,
        latency_batch_size=study.objectives.latency_batch_size,
        latency_threads=study.objectives.latency_threads,
        latency_min_run_time_s=study.objectives.latency_min_run_time_s,
    )


def fail_stale_trials(optuna_study: optuna.Study) -> int:
    """Mark trials that a killed run left RUNNING as FAILED; return how many there were.

    Only for a storage without heartbeats, and only before any worker of this run starts: it cannot
    tell a dead process's trial from a live one's.
    """
    storage = optuna_study._storage
    stale = optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(
            trial._trial_id, "error", "interrupted: the process running it was killed"
        )
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def fail_trials_without_heartbeat(optuna_study: optuna.Study) -> None:
    """Fail (and queue again) trials whose worker stopped sending heartbeats; no-op without heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(optuna_study)


def objective_values(result: dict) -> list[float]:
    """The trial's objectives in the study's order (retention, compression, latency)."""
    return [result[name] for name in OBJECTIVES]


def trial_line(number: int, result: dict) -> str:
    """One line per completed trial: its student, method, the three objectives and any INT8 warning."""
    config = result["config"]
    method = "+".join(config["methods"]) or NO_DISTILLATION
    flags = "".join(
        [
            " [INT8 slower than FP32]" if result.get("int8_slower_than_fp32") else "",
            " [INT8 disagrees with FP32]" if not result.get("agreement_ok", True) else "",
        ]
    )
    speedup = f" ({result['int8_speedup_vs_fp32']:.2f}x FP32)" if "int8_speedup_vs_fp32" in result else ""
    return (
        f"trial {number:>3}: {config['family']:<11} w={config['width']:.2f} d={config['depth']:.2f} {method:<12}"
        f"{' qat' if config.get('qat') else ''} params {result['parameters']:>9,}  retention {result['retention']:.3f} "
        f"(fp32 {result['retention_fp32']:.3f})  compression {result['compression']:6.1f}x  latency "
        f"{result['latency_ms']:.2f} ms{speedup}  {result['wall_seconds']:.0f} s{flags}"
    )


@dataclass
class SearchOutcome:
    """What a search run did: its run folder and trial counts."""

    run_dir: Path
    completed: int
    failed_now: int
    stopped_reason: str


@dataclass
class Resources:
    """What every backend needs before its first trial, each built once: data, teacher, its outputs."""

    study: Study
    run_dir: Path
    plugin_paths: list[Path]
    data: DataSplits
    teacher: Teacher
    outputs: TeacherOutputs

    def teacher_reference(self) -> TeacherReference:
        """The teacher as trials see it: its outputs (cached or live) and its FP32 figures."""
        t = self.teacher
        return TeacherReference(self.outputs, t.test_accuracy, t.parameters, t.weight_bytes)


@dataclass
class SearchContext:
    """Everything trials share, prepared once per process: data, teacher and its outputs, the Optuna study."""

    study: Study
    data: DataSplits
    teacher: TeacherReference
    optuna_study: optuna.Study
    run_dir: Path
    latency_lock: Path
    plugin_paths: list[Path] = field(default_factory=list)


def teacher_stages_needed(study: Study, teacher_model: torch.nn.Module) -> list[int]:
    """Teacher feature stages that any plugin in the search space may ask for (to cache them once)."""
    stages: set[int] = set()
    for choice in study.search_space.methods:
        for name in methods_of(choice):
            plugin = METHODS.get(name)
            if plugin.needs_features and plugin.needs_teacher_features:
                stages.update(feature_stage_indices(teacher_model, plugin.needs_features))
    return sorted(stages)


def load_study_data(study: Study) -> DataSplits:
    """The study's train/val/test tensors."""
    d = study.data
    return load_splits(
        d.dataset,
        data_dir=d.data_dir,
        download=d.download,
        train_subsample=d.train_subsample,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
        seed=study.seed,
    )


def prepare_resources(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> Resources:
    """Load plugins and data, get the teacher (trained once, then read from disk) and its output cache."""
    plugin_paths = study.plugin_paths(study_path)
    load_methods(plugin_paths)
    validate_against_registries(study)
    torch.set_num_threads(threads or study.training.threads or os.cpu_count() or 1)
    # Failed trials are reported on one line each (with the `error` attribute); Optuna's own warning
    # would repeat them with a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = load_study_data(study)
    log(
        f"data {study.data.dataset}: {len(data.train_x)} train / {len(data.val_x)} val / {len(data.test_x)} test images"
    )
    teacher = prepare_teacher(study, data, runs_root, log)
    outputs = build_teacher_outputs(
        teacher.model,
        data.train_x,
        teacher.directory,
        teacher.key,
        enabled=study.teacher_cache,
        augmentation=augmentation_of(study),
        views=study.augmentation.views,
        stages=teacher_stages_needed(study, teacher.model),
        max_bytes=int(study.teacher_cache_max_gb * 1e9),
        seed=study.seed,
        log=log,
    )
    return Resources(study, runs_root / study.name, plugin_paths, data, teacher, outputs)


def _described(optuna_study: optuna.Study, *, wait: bool) -> bool:
    """Whether the study-level attributes are stored; with ``wait``, give the machine that created
    the study a moment to store them (it measures the teacher's latency first)."""
    deadline = time.monotonic() + (DESCRIBE_WAIT_SECONDS if wait else 0)
    while "teacher" not in optuna_study.user_attrs:
        if time.monotonic() > deadline:
            return False  # its creator died before describing it: describe it here
        time.sleep(WAIT_POLL_SECONDS)
    return True


def open_optuna_study(
    resources: Resources, location: StorageLocation, *, log: Callable[[str], None] = print
) -> optuna.Study:
    """Create the study (measuring the teacher's latency and storing the study-level attributes) or
    resume it: check it has the same teacher, and fail the trials a dead process left RUNNING."""
    study = resources.study
    storage = location.open()
    existing = study.name in optuna.get_all_study_names(storage)
    previous_trials = (
        len(optuna.load_study(study_name=study.name, storage=storage).get_trials(deepcopy=False))
        if existing
        else 0
    )
    optuna_study = optuna.create_study(
        study_name=study.name,
        storage=storage,
        directions=list(DIRECTIONS),
        sampler=make_sampler(study, offset=previous_trials),
        load_if_exists=True,
    )
    if not existing or not _described(optuna_study, wait=location.heartbeats):
        _record_study_attributes(
            optuna_study, study, resources.data, resources.teacher, resources.outputs, machine_latency_lock()
        )
        return optuna_study
    stored_key = optuna_study.user_attrs.get("teacher", {}).get("key")
    if stored_key != resources.teacher.key:
        raise StudyFileError(
            f"study '{study.name}' in {location.describe()} was run with another teacher or data ({stored_key}); "
            "rename the study or delete its run folder"
        )
    if location.heartbeats:
        # Other machines may be running trials right now: only heartbeats can tell which are dead.
        fail_trials_without_heartbeat(optuna_study)
    elif stale := fail_stale_trials(optuna_study):
        log(f"resuming '{study.name}': {stale} interrupted trial(s) marked FAILED")
    return optuna_study


def prepare_search(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    location: StorageLocation | None = None,
) -> SearchContext:
    """Resources plus the created or resumed Optuna study: what one process needs to run trials."""
    resources = prepare_resources(study, runs_root=runs_root, study_path=study_path, log=log)
    optuna_study = open_optuna_study(resources, location or StorageLocation(resources.run_dir), log=log)
    return _context(resources, optuna_study)


def _context(resources: Resources, optuna_study: optuna.Study) -> SearchContext:
    return SearchContext(
        resources.study,
        resources.data,
        resources.teacher_reference(),
        optuna_study,
        resources.run_dir,
        machine_latency_lock(),
        resources.plugin_paths,
    )


def record_execution(optuna_study: optuna.Study, *, backend: str, concurrent_trials: int, **details) -> None:
    """Append how this search ran (backend, concurrency, latency policy) to the study, for the report."""
    executions = list(optuna_study.user_attrs.get("executions", []))
    executions.append(
        {
            "backend": backend,
            "concurrent_trials": concurrent_trials,
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "latency_measurement": MEASUREMENT_POLICY,
            **details,
        }
    )
    optuna_study.set_user_attr("executions", executions)


def _record_study_attributes(
    optuna_study: optuna.Study,
    study: Study,
    data: DataSplits,
    teacher: Teacher,
    outputs: TeacherOutputs,
    lock: Path,
) -> None:
    """Fix, before the first trial, what every later report needs: teacher figures and the reference point."""
    # The teacher's FP32 latency on the students' runtime, measured the same way as theirs.
    example = latency_example(data.test_x, study.objectives.latency_batch_size)
    teacher_latency = measure_latency(
        BACKENDS.get(study.quantization.backend).float_model(teacher.model, example),
        example,
        threads=study.objectives.latency_threads,
        min_run_time_s=study.objectives.latency_min_run_time_s,
        lock_path=lock,
    )
    ref = study.objectives.reference_point
    optuna_study.set_user_attr("study", json.loads(study.model_dump_json()))
    optuna_study.set_user_attr(
        "teacher",
        {
            "key": teacher.key,
            "model": teacher.model_name,
            "test_accuracy": teacher.test_accuracy,
            "val_accuracy": teacher.val_accuracy,
            "parameters": teacher.parameters,
            "weight_bytes": teacher.weight_bytes,
            "latency": teacher_latency.as_dict(),
            "cache": {
                "enabled": study.teacher_cache,
                "views": outputs.num_views,
                "cached_stages": sorted(outputs.features),
                "live_stages": list(outputs.live_stages),
            },
        },
    )
    optuna_study.set_user_attr(
        "reference_point",
        {
            "retention": ref.retention,
            "compression": ref.compression,
            "latency_ms": teacher_latency.median_ms if ref.latency_ms == "teacher" else ref.latency_ms,
        },
    )
    optuna_study.set_user_attr(
        "data", {"train": len(data.train_x), "val": len(data.val_x), "test": len(data.test_x)}
    )


def _completed(optuna_study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _prescreen(ctx: SearchContext, config: TrialConfig) -> dict | None:
    """Size and latency of an untrained student, when an already-measured student above the retention
    floor is at least as small and as fast (so training this one cannot reach the front); else None."""
    floor = ctx.study.objectives.retention_floor
    good = [t for t in _completed(ctx.optuna_study) if t.values[0] >= floor]
    if not good:
        return None
    start = time.perf_counter()
    measured = measure_untrained(config, ctx.data, ctx.teacher, ctx.latency_lock)
    for t in good:
        if t.values[1] >= measured["compression"] and t.values[2] <= measured["latency_ms"]:
            measured.update(dominated_by=t.number, prescreen_seconds=time.perf_counter() - start)
            return measured
    return None


def _epoch_rule(
    ctx: SearchContext, config: TrialConfig, history: list[float]
) -> Callable[[int, float], None]:
    rule = ctx.study.early_stopping
    started = time.perf_counter()

    def on_epoch(epoch: int, val_accuracy: float) -> None:
        history.append(val_accuracy)
        if not rule.enabled or epoch >= config.epochs:
            return
        # Families learn at different speeds: compare only with completed students of the same family.
        histories = [
            t.user_attrs.get("val_accuracy_per_epoch", [])
            for t in _completed(ctx.optuna_study)
            if t.params.get("family") == config.family
        ]
        median = should_stop(
            epoch,
            val_accuracy,
            histories,
            warmup_epochs=rule.warmup_epochs,
            min_completed_trials=rule.min_completed_trials,
        )
        if median is not None:
            per_epoch = (time.perf_counter() - started) / epoch
            raise TrialStopped(epoch, val_accuracy, median, seconds_saved=per_epoch * (config.epochs - epoch))

    return on_epoch


def run_one_trial(ctx: SearchContext, log: Callable[[str], None]) -> TrialState:
    """Ask the study for one trial, run it, and tell the study how it ended.

    The trial goes through ``Study.optimize`` so that a database storage records its heartbeat.
    """
    finished: list[optuna.trial.FrozenTrial] = []

    def objective(trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", worker_id())
        config = sample_config(trial, ctx.study)
        if ctx.study.prescreen:
            skipped = _prescreen(ctx, config)
            if skipped is not None:
                trial.set_user_attr("prescreened", skipped)
                log(
                    f"trial {trial.number:>3}: skipped before training ({config.family} w={config.width:.2f} "
                    f"d={config.depth:.2f}: trial {skipped['dominated_by']} is as small and as fast, above the floor)"
                )
                raise optuna.TrialPruned()
        history: list[float] = []
        try:
            result = run_trial(
                config,
                ctx.data,
                ctx.teacher,
                on_epoch=_epoch_rule(ctx, config, history),
                latency_lock=ctx.latency_lock,
                artifact_dir=trial_dir(ctx.run_dir, trial.number),
            )
        except TrialStopped as stop:
            trial.set_user_attr("stopped_at_epoch", stop.epoch)
            trial.set_user_attr("val_accuracy_per_epoch", history)
            trial.set_user_attr("seconds_saved", stop.seconds_saved)
            log(
                f"trial {trial.number:>3}: stopped early ({config.family} w={config.width:.2f} d={config.depth:.2f}: {stop})"
            )
            raise optuna.TrialPruned() from None
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted by the user")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log(f"trial {trial.number:>3}: FAILED ({type(exc).__name__}: {exc})")
            raise
        for key, value in result.items():
            trial.set_user_attr(key, value)
        log(trial_line(trial.number, result))
        return objective_values(result)

    ctx.optuna_study.optimize(
        objective, n_trials=1, catch=(Exception,), callbacks=[lambda _, trial: finished.append(trial)]
    )
    return finished[-1].state


def _count(optuna_study: optuna.Study, state: TrialState) -> int:
    return len(optuna_study.get_trials(deepcopy=False, states=(state,)))


def run_trials(
    ctx: SearchContext,
    *,
    deadline: float | None,
    emit: Callable[[str], None] = print,
    on_completed: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Run trials in this process until the study is done; return (trials failed here, why it stopped).

    Several processes may run this loop on one study. A trial starts only while completed plus running
    trials stay below the budget, so the budget is overshot only when two workers start the last
    trial at the same moment; a worker with nothing to start waits, in case a running trial fails.
    """
    budget = ctx.study.budget
    consecutive_failures, failed = 0, 0
    while True:
        completed = _count(ctx.optuna_study, TrialState.COMPLETE)
        if on_completed is not None:
            on_completed(completed)
        if completed >= budget.trials:
            return failed, "budget"
        if deadline is not None and time.time() > deadline:
            return failed, "time limit"
        if completed + _count(ctx.optuna_study, TrialState.RUNNING) >= budget.trials:
            fail_trials_without_heartbeat(ctx.optuna_study)
            time.sleep(WAIT_POLL_SECONDS)
            continue
        state = run_one_trial(ctx, emit)
        if state != TrialState.FAIL:
            consecutive_failures = 0
            continue
        failed += 1
        consecutive_failures += 1
        if consecutive_failures >= budget.max_consecutive_failures:
            return failed, f"{consecutive_failures} consecutive failed trials"


@dataclass(frozen=True)
class _WorkerTask:
    """What a worker process needs: plain data, from which it reopens data, teacher and cache from disk."""

    index: int
    study: Study
    runs_root: Path
    study_path: Path | None
    location: StorageLocation
    deadline: float | None
    threads: int


def _worker_main(task: _WorkerTask, outcomes) -> None:
    """Entry point of a worker process: run trials of the shared study until it is done."""
    prefix = f"[worker {task.index}] "

    def emit(line: str) -> None:
        print(prefix + line, flush=True)

    try:
        # The parent built the teacher and its output cache: here they are only read from disk.
        resources = prepare_resources(
            task.study,
            runs_root=task.runs_root,
            study_path=task.study_path,
            log=lambda _: None,
            threads=task.threads,
        )
        storage = task.location.open()
        study = task.study
        previous = len(optuna.load_study(study_name=study.name, storage=storage).get_trials(deepcopy=False))
        # Every worker draws its own random sequence: same-seeded workers would propose the same settings.
        # (Spread the pid out: consecutive pids plus trial counts one apart would otherwise collide.)
        sampler = make_sampler(study, offset=previous + 65_537 * os.getpid())
        optuna_study = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
        failed, reason = run_trials(_context(resources, optuna_study), deadline=task.deadline, emit=emit)
    except KeyboardInterrupt:
        failed, reason = 0, "interrupted"
    except Exception as exc:  # noqa: BLE001 - one line to the parent, not a traceback per worker
        emit(f"stopped: {type(exc).__name__}: {exc}")
        failed, reason = 0, f"worker {task.index} stopped ({type(exc).__name__}: {exc})"
    outcomes.put((task.index, failed, reason))


def _run_workers(
    study: Study,
    runs_root: Path,
    study_path: Path | None,
    location: StorageLocation,
    workers: int,
    deadline: float | None,
) -> tuple[int, str]:
    context = torch.multiprocessing.get_context("spawn")
    outcomes = context.SimpleQueue()
    threads = study.training.threads or max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(
            target=_worker_main,
            args=(_WorkerTask(i, study, runs_root, study_path, location, deadline, threads), outcomes),
            name=f"autokd-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    finally:
        for process in processes:  # after Ctrl-C: give workers time to fail their trial, then stop them
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    reports = []
    while not outcomes.empty():
        reports.append(outcomes.get())
    failed = sum(report[1] for report in reports)
    reasons = sorted({report[2] for report in reports})
    crashed = [f"{p.name} exited with code {p.exitcode}" for p in processes if p.exitcode != 0]
    if "budget" in reasons:
        return failed, "budget"
    if "time limit" in reasons:
        return failed, "time limit"
    return failed, "; ".join(crashed + reasons)


def run_search(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    workers: int = 1,
    storage_url: str | None = None,
    heartbeat_interval: int = 60,
) -> SearchOutcome:
    """Run (or resume) ``study`` until its budget of completed trials or its time limit is reached.

    ``workers`` > 1 runs that many processes on the study's storage; ``storage_url`` (PostgreSQL) puts
    the study in a database that workers on several machines share, with heartbeats every
    ``heartbeat_interval`` seconds so that a dead worker's trial is failed and run again.
    """
    start = time.time()
    deadline = start + study.budget.time_limit_minutes * 60 if study.budget.time_limit_minutes else None
    location = StorageLocation(runs_root / study.name, storage_url, heartbeat_interval)
    ctx = prepare_search(study, runs_root=runs_root, study_path=study_path, log=log, location=location)
    record_execution(
        ctx.optuna_study,
        backend="optuna",
        concurrent_trials=workers,
        storage="database" if storage_url else "journal",
        worker_processes=workers,
    )
    budget = study.budget
    done = _count(ctx.optuna_study, TrialState.COMPLETE)
    if done:
        log(f"resuming '{study.name}': {done}/{budget.trials} trials already complete")
    if workers == 1:
        with tqdm(
            total=budget.trials,
            initial=done,
            desc=study.name,
            unit="trial",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            failed_now, reason = run_trials(
                ctx,
                deadline=deadline,
                emit=bar.write if progress else log,
                on_completed=lambda completed: bar.update(completed - bar.n),
            )
    else:
        log(f"{workers} worker processes on {location.describe()}")
        failed_now, reason = _run_workers(study, runs_root, study_path, location, workers, deadline)
    if storage_url:
        copy_to_journal(ctx.optuna_study, ctx.run_dir)
        log(f"copied the study from {location.describe()} into {ctx.run_dir / JOURNAL} for the report")
    return SearchOutcome(
        run_dir=ctx.run_dir,
        completed=_count(ctx.optuna_study, TrialState.COMPLETE),
        failed_now=failed_now,
        stopped_reason=reason,
    )
