"""The Optuna orchestrator: samples trial configs, runs them, stores every metric in a journal file.

The study lives in ``<runs>/<name>/optuna-journal.log`` (JournalStorage, file backend), so that
``optuna.load_study`` and optuna-dashboard open it. Running the same study again resumes it: trials a
killed process left RUNNING are marked FAILED, and the budget counts completed trials only.
"""

from __future__ import annotations

import json
import os
import time
import warnings
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
from autokd.data import load_splits
from autokd.distill import PLUGINS, load_plugins
from autokd.measure import latency_example, measure_latency
from autokd.pareto import DIRECTIONS
from autokd.quantize import BACKENDS
from autokd.students import FAMILIES
from autokd.teacher import prepare_teacher
from autokd.trial import TeacherReference, TrialConfig, run_trial

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


def _resolve_plugin_paths(study: Study, study_path: Path | None) -> list[Path]:
    base = study_path.parent if study_path else Path.cwd()
    return [p if (p := Path(raw)).is_absolute() else base / p for raw in study.plugins]


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
    load_plugins(_resolve_plugin_paths(study, study_path))
    validate_against_registries(study)
    torch.set_num_threads(study.training.threads or os.cpu_count() or 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    d = study.data
    data = load_splits(
        d.dataset,
        data_dir=d.data_dir,
        download=d.download,
        train_subsample=d.train_subsample,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
        seed=study.seed,
    )
    log(
        f"data {d.dataset}: {len(data.train_x)} train / {len(data.val_x)} val / {len(data.test_x)} test images"
    )
    teacher = prepare_teacher(study, data, runs_root, log)
    run_dir = runs_root / study.name
    storage = journal_storage(run_dir)
    existing = [s for s in optuna.get_all_study_names(storage) if s == study.name]
    previous_trials = 0
    if existing:
        previous_trials = len(optuna.load_study(study_name=study.name, storage=storage).trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna_study = optuna.create_study(
            study_name=study.name,
            storage=storage,
            directions=list(DIRECTIONS),
            sampler=make_sampler(study, offset=previous_trials),
            load_if_exists=True,
        )
    lock = run_dir / "latency.lock"
    if not existing:
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
        reference = {
            "retention": ref.retention,
            "compression": ref.compression,
            "latency_ms": teacher_latency.median_ms if ref.latency_ms == "teacher" else ref.latency_ms,
        }
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
            },
        )
        optuna_study.set_user_attr("reference_point", reference)
        optuna_study.set_user_attr(
            "data", {"train": len(data.train_x), "val": len(data.val_x), "test": len(data.test_x)}
        )
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
    teacher_ref = TeacherReference(
        teacher.model, teacher.train_logits, teacher.test_accuracy, teacher.parameters, teacher.weight_bytes
    )

    def completed() -> int:
        return len(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    budget = study.budget
    done = completed()
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
            trial = optuna_study.ask()
            config = sample_config(trial, study)
            try:
                result = run_trial(
                    config,
                    data,
                    teacher_ref,
                    latency_lock=lock,
                    artifact_dir=trial_dir(run_dir, trial.number),
                )
            except KeyboardInterrupt:
                trial.set_user_attr("error", "interrupted by the user")
                optuna_study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                optuna_study.tell(trial, state=TrialState.FAIL)
                failed_now += 1
                consecutive_failures += 1
                bar.write(f"trial {trial.number:>3}: FAILED ({type(exc).__name__}: {exc})")
                if consecutive_failures >= budget.max_consecutive_failures:
                    reason = f"{consecutive_failures} consecutive failed trials"
                    break
                continue
            consecutive_failures = 0
            for key, value in result.items():
                trial.set_user_attr(key, value)
            optuna_study.tell(trial, [result["retention"], result["compression"], result["latency_ms"]])
            bar.write(_trial_line(trial.number, result, config))
            done = completed()
            bar.update(done - bar.n)
    finally:
        bar.close()
    return SearchOutcome(run_dir=run_dir, completed=completed(), failed_now=failed_now, stopped_reason=reason)
