"""The Optuna orchestrator: samples trial configs, runs them, stores every metric in a journal file.

The study lives in ``<runs>/<name>/optuna-journal.log`` (JournalStorage, file backend), so that
``optuna.load_study`` and optuna-dashboard open it. Running the same study again resumes it: trials a
killed process left RUNNING are marked FAILED, and the budget counts completed trials only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm import tqdm

from autokd.config import Study, StudyFileError
from autokd.data import DataSplits, load_splits
from autokd.distill import PLUGINS, load_plugins
from autokd.early_stopping import TrialStopped, should_stop
from autokd.features import feature_stage_indices
from autokd.measure import latency_example, measure_latency
from autokd.pareto import DIRECTIONS
from autokd.quantize import BACKENDS
from autokd.students import FAMILIES
from autokd.teacher import Teacher, augmentation_of, prepare_teacher
from autokd.teacher_cache import TeacherOutputs, build_teacher_outputs
from autokd.trial import TeacherReference, TrialConfig, measure_untrained, run_trial

JOURNAL = "optuna-journal.log"
NO_DISTILLATION = "none"
TRIALS_DIR = "trials"


def trial_dir(run_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its FP32 student weights and INT8 artifact."""
    return run_dir / TRIALS_DIR / str(number)


def journal_storage(run_dir: Path) -> JournalStorage:
    """The study's storage: a journal file that several processes on one machine may share."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))


def make_sampler(study: Study, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The explicitly configured sampler; ``offset`` shifts the seed so a resumed run draws new points."""
    seed = study.seed + offset
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
            if name not in PLUGINS:
                allowed = ", ".join([NO_DISTILLATION, *PLUGINS.names()])
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
            for key, spec in PLUGINS.get(name).hyperparameters.items()
        }
    qat_choices = study.quantization.qat_choices
    qat = trial.suggest_categorical("qat", qat_choices) if len(qat_choices) > 1 else qat_choices[0]
    return TrialConfig(
        family=family,
        width=width,
        depth=depth,
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
    """Mark trials that a killed run left RUNNING as FAILED; return how many there were."""
    storage = optuna_study._storage
    stale = optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(
            trial._trial_id, "error", "interrupted: the process running it was killed"
        )
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def _trial_line(number: int, result: dict, config: TrialConfig) -> str:
    method = "+".join(config.methods) or NO_DISTILLATION
    flags = "".join(
        [
            " [INT8 slower than FP32]" if result["int8_slower_than_fp32"] else "",
            " [INT8 disagrees with FP32]" if not result["agreement_ok"] else "",
        ]
    )
    return (
        f"trial {number:>3}: {config.family:<11} w={config.width:.2f} d={config.depth:.2f} {method:<12}"
        f"{' qat' if config.qat else ''} params {result['parameters']:>9,}  retention {result['retention']:.3f} "
        f"(fp32 {result['retention_fp32']:.3f})  compression {result['compression']:6.1f}x  latency "
        f"{result['latency_ms']:.2f} ms ({result['int8_speedup_vs_fp32']:.2f}x FP32)  {result['wall_seconds']:.0f} s{flags}"
    )


@dataclass
class SearchOutcome:
    """What a search run did: its run folder and trial counts."""

    run_dir: Path
    completed: int
    failed_now: int
    stopped_reason: str


@dataclass
class SearchContext:
    """Everything trials share, prepared once per run: data, teacher and its outputs, the Optuna study."""

    study: Study
    data: DataSplits
    teacher: TeacherReference
    optuna_study: optuna.Study
    run_dir: Path
    latency_lock: Path


def teacher_stages_needed(study: Study, teacher_model: torch.nn.Module) -> list[int]:
    """Teacher feature stages that any plugin in the search space may ask for (to cache them once)."""
    stages: set[int] = set()
    for choice in study.search_space.methods:
        for name in methods_of(choice):
            plugin = PLUGINS.get(name)
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


def prepare_search(
    study: Study, *, runs_root: Path, study_path: Path | None = None, log: Callable[[str], None] = print
) -> SearchContext:
    """Load plugins and data, get the teacher and its output cache, create or resume the Optuna study."""
    load_plugins(study.plugin_paths(study_path))
    validate_against_registries(study)
    torch.set_num_threads(study.training.threads or os.cpu_count() or 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    run_dir = runs_root / study.name
    storage = journal_storage(run_dir)
    existing = study.name in optuna.get_all_study_names(storage)
    previous_trials = len(optuna.load_study(study_name=study.name, storage=storage).trials) if existing else 0
    optuna_study = optuna.create_study(
        study_name=study.name,
        storage=storage,
        directions=list(DIRECTIONS),
        sampler=make_sampler(study, offset=previous_trials),
        load_if_exists=True,
    )
    lock = run_dir / "latency.lock"
    if not existing:
        _record_study_attributes(optuna_study, study, data, teacher, outputs, lock)
    else:
        stored_key = optuna_study.user_attrs.get("teacher", {}).get("key")
        if stored_key != teacher.key:
            raise StudyFileError(
                f"study '{study.name}' in {run_dir} was run with another teacher or data ({stored_key}); "
                "rename the study or delete its run folder"
            )
        stale = fail_stale_trials(optuna_study)
        if stale:
            log(f"resuming '{study.name}': {stale} interrupted trial(s) marked FAILED")
    reference = TeacherReference(outputs, teacher.test_accuracy, teacher.parameters, teacher.weight_bytes)
    return SearchContext(study, data, reference, optuna_study, run_dir, lock)


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
    """Ask the study for one trial, run it, and tell the study how it ended."""
    trial = ctx.optuna_study.ask()
    config = sample_config(trial, ctx.study)
    if ctx.study.prescreen:
        skipped = _prescreen(ctx, config)
        if skipped is not None:
            trial.set_user_attr("prescreened", skipped)
            ctx.optuna_study.tell(trial, state=TrialState.PRUNED)
            log(
                f"trial {trial.number:>3}: skipped before training ({config.family} w={config.width:.2f} "
                f"d={config.depth:.2f}: trial {skipped['dominated_by']} is as small and as fast, above the floor)"
            )
            return TrialState.PRUNED
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
        ctx.optuna_study.tell(trial, state=TrialState.PRUNED)
        log(
            f"trial {trial.number:>3}: stopped early ({config.family} w={config.width:.2f} d={config.depth:.2f}: {stop})"
        )
        return TrialState.PRUNED
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted by the user")
        ctx.optuna_study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        ctx.optuna_study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number:>3}: FAILED ({type(exc).__name__}: {exc})")
        return TrialState.FAIL
    for key, value in result.items():
        trial.set_user_attr(key, value)
    ctx.optuna_study.tell(trial, [result["retention"], result["compression"], result["latency_ms"]])
    log(_trial_line(trial.number, result, config))
    return TrialState.COMPLETE


def run_search(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> SearchOutcome:
    """Run (or resume) ``study`` until its budget of completed trials or its time limit is reached."""
    start = time.monotonic()
    ctx = prepare_search(study, runs_root=runs_root, study_path=study_path, log=log)
    budget = study.budget
    done = len(_completed(ctx.optuna_study))
    if done:
        log(f"resuming '{study.name}': {done}/{budget.trials} trials already complete")
    bar = tqdm(
        total=budget.trials,
        initial=done,
        desc=study.name,
        unit="trial",
        disable=not progress,
        dynamic_ncols=True,
    )
    consecutive_failures, failed_now, reason = 0, 0, "budget"
    try:
        while done < budget.trials:
            if budget.time_limit_minutes and time.monotonic() - start > budget.time_limit_minutes * 60:
                reason = "time limit"
                break
            state = run_one_trial(ctx, bar.write if progress else log)
            if state == TrialState.FAIL:
                failed_now += 1
                consecutive_failures += 1
                if consecutive_failures >= budget.max_consecutive_failures:
                    reason = f"{consecutive_failures} consecutive failed trials"
                    break
            else:
                consecutive_failures = 0
            done = len(_completed(ctx.optuna_study))
            bar.update(done - bar.n)
    finally:
        bar.close()
    return SearchOutcome(run_dir=ctx.run_dir, completed=done, failed_now=failed_now, stopped_reason=reason)
