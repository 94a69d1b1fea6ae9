"""The search core every driver shares: open the study, then per trial propose → run → record.

A driver (``autokd.drivers.optuna``, ``autokd.drivers.ray``) differs only in how and where trials run.
What a trial is, how its config is sampled, when the pre-screen skips it, when early stopping stops
it, what is stored about it and when the search ends are decided here, in :mod:`autokd.space`,
:mod:`autokd.record` and :mod:`autokd.budget`, once.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from autokd.config import Study, StudyFileError
from autokd.early_stopping import should_stop
from autokd.measure import MEASUREMENT_POLICY, latency_example, machine_latency_lock, measure_latency
from autokd.pareto import DIRECTIONS, OBJECTIVES
from autokd.quantize import BACKENDS
from autokd.record import (
    EarlyStop,
    fail_interrupted,
    record_failure,
    record_prescreen,
    record_result,
    record_start,
    record_stop,
)
from autokd.resources import Resources
from autokd.space import make_sampler, sample_config
from autokd.storage import StorageLocation, trial_dir
from autokd.strategy import could_extend_front, dominating, expected_gain, retention_bound
from autokd.students import count_parameters
from autokd.teacher import is_study_teacher
from autokd.trial import (
    TrialConfig,
    TrialResult,
    architecture_key,
    measure_student,
    new_student,
    run_trial,
)

MEDIAN_RULE = "median rule on validation accuracy"
CHOSEN_MEASUREMENT = "candidate_measurement"  # user attribute of a trial enqueued by choose_candidate
# How long a machine joining a database study waits for the creating machine to store its attributes.
DESCRIBE_WAIT_SECONDS = 120.0
WAIT_POLL_SECONDS = 1.0


def worker_id() -> str:
    """This process, as trials record who ran them."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialStopped(Exception):
    """Raised from a trial's epoch callback when the early-stopping rule stops it."""

    def __init__(self, stop: EarlyStop) -> None:
        super().__init__(f"stopped at epoch {stop.epoch} by the {stop.stopped_by}")
        self.stop = stop


class ProposalFailed(Exception):
    """A trial's settings could not be sampled; the error is recorded on the trial."""


@dataclass(frozen=True)
class Outcome:
    """How one trial ended, whichever driver ran it."""

    state: TrialState
    result: TrialResult | None = None
    stop: EarlyStop | None = None
    error: str | None = None


def _described(optuna_study: optuna.Study, *, wait: bool) -> bool:
    deadline = time.monotonic() + (DESCRIBE_WAIT_SECONDS if wait else 0)
    while "teacher" not in optuna_study.user_attrs:
        if time.monotonic() > deadline:
            return False  # its creator died before describing it: describe it here
        time.sleep(WAIT_POLL_SECONDS)
    return True


def describe_study(optuna_study: optuna.Study, resources: Resources, lock: Path) -> None:
    """Fix, before the first trial, what every later report needs: teacher figures and the reference point."""
    study, data, teacher, outputs = resources.study, resources.data, resources.teacher, resources.outputs
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna_study.set_metric_names(list(OBJECTIVES))
    optuna_study.set_user_attr("study", json.loads(study.model_dump_json()))
    # Resolved, so that export and report can load the same extension files from anywhere.
    optuna_study.set_user_attr("extensions", [str(p.resolve()) for p in resources.extension_paths])
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


# Settings a resumed study may change: how long and how it runs, not what a trial is or how it is measured.
RESUMABLE_CHANGES = (
    "budget.trials",
    "budget.time_limit_minutes",
    "budget.max_consecutive_failures",
    "training.threads",
    "training.device",  # where trials train, not what a trial is (the latency runtime is fixed)
    "training.amp",
    "training.cpu_bf16",
    "parallel.",
    "teacher_cache",
    "teacher_cache_max_gb",
    "prescreen",
    "extensions",
    "plugins",
)


def _flatten(settings: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "method_params":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(stored: dict, study: Study) -> list[str]:
    """``field: old -> new`` for every setting that differs from the stored study's and may not change."""
    old, new = _flatten(stored), _flatten(json.loads(study.model_dump_json()))
    return [
        f"{key}: {old[key]!r} -> {new[key]!r}"
        for key in sorted(old.keys() & new.keys())
        if old[key] != new[key] and not key.startswith(RESUMABLE_CHANGES)
    ]


def check_unchanged(study: Study, location: StorageLocation) -> None:
    """Refuse to resume a study whose file changed what a trial is or how it is measured.

    Run before any data or teacher work, so a changed study costs nothing. Budget, time limit,
    threads, parallelism and the like may change between runs; anything else would mix trials that
    are not comparable into one front.
    """
    storage = location.open()
    if study.name not in optuna.get_all_study_names(storage):
        return
    stored = optuna.load_study(study_name=study.name, storage=storage).user_attrs.get("study")
    if not stored:
        return
    changes = changed_settings(stored, study)
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise StudyFileError(
            f"study '{study.name}' in {location.describe()} was run with other settings ({shown}): trials "
            "of both would share one front; give the study a new name to search these settings, or "
            "restore them to resume"
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


def record_end(
    optuna_study: optuna.Study, reason: object, *, prepare_seconds: float, threads: int, **details
) -> None:
    """Complete this search's execution record: why it stopped, what preparing cost, torch threads."""
    executions = list(optuna_study.user_attrs.get("executions", []))
    if not executions:
        return
    executions[-1] = {
        **executions[-1],
        "stopped_by": str(reason),
        "ended": datetime.datetime.now().isoformat(timespec="seconds"),
        "prepare_seconds": round(prepare_seconds, 1),
        "threads": threads,
        **details,
    }
    optuna_study.set_user_attr("executions", executions)


def open_study(
    resources: Resources,
    location: StorageLocation,
    *,
    log: Callable[[str], None] = print,
    sampler_offset: int | None = None,
) -> optuna.Study:
    """Create the study (measuring the teacher's latency and storing the study-level attributes) or
    resume it: check it has the same teacher, and fail the trials a dead process left RUNNING."""
    study = resources.study
    storage = location.open()
    existing = study.name in optuna.get_all_study_names(storage)
    previous = (
        len(optuna.load_study(study_name=study.name, storage=storage).get_trials(deepcopy=False))
        if existing
        else 0
    )
    optuna_study = optuna.create_study(
        study_name=study.name,
        storage=storage,
        directions=list(DIRECTIONS),
        sampler=make_sampler(study, offset=previous if sampler_offset is None else sampler_offset),
        load_if_exists=True,
    )
    if not existing or not _described(optuna_study, wait=location.heartbeats):
        describe_study(optuna_study, resources, machine_latency_lock())
        return optuna_study
    stored_teacher = optuna_study.user_attrs.get("teacher", {})
    if not is_study_teacher(stored_teacher.get("key"), study, resources.teacher.key):
        raise StudyFileError(
            f"study '{study.name}' in {location.describe()} was run with another teacher or data "
            f"({stored_teacher.get('key')}); rename the study or delete its run folder"
        )
    if stored_teacher["key"] != resources.teacher.key:  # stored under its autokd 0.3 key
        optuna_study.set_user_attr("teacher", {**stored_teacher, "key": resources.teacher.key})
    # Only resumable settings can differ here (check_unchanged ran first): store the current ones.
    optuna_study.set_user_attr("study", json.loads(study.model_dump_json()))
    return optuna_study


def fail_dead_trials(
    optuna_study: optuna.Study, location: StorageLocation, log: Callable[[str], None]
) -> None:
    """Fail the trials whose process is gone: by heartbeat on a database, else every RUNNING trial.

    Without heartbeats this cannot tell a dead process's trial from a live one's: call it only before
    any worker of this search starts.
    """
    if location.heartbeats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(optuna_study)
    elif stale := fail_interrupted(optuna_study, "interrupted: the process running it was killed"):
        log(f"resuming '{optuna_study.study_name}': {stale} interrupted trial(s) marked FAILED")


def completed_count(optuna_study: optuna.Study) -> int:
    """Completed trials (what the budget counts)."""
    return len(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def running_count(optuna_study: optuna.Study) -> int:
    """Trials running now, in any process."""
    return len(optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def trial_line(number: int, config: TrialConfig, result: TrialResult) -> str:
    """One line per completed trial: its student, method, the three objectives and any INT8 warning."""
    method = "+".join(config.methods) or "none"
    flags = "".join(
        [
            " [INT8 slower than FP32]" if result.int8_slower_than_fp32 else "",
            " [INT8 disagrees with FP32]" if not result.agreement_ok else "",
        ]
    )
    return (
        f"trial {number:>3}: {config.family:<11} w={config.width:.2f} d={config.depth:.2f} {method:<12}"
        f"{' qat' if config.qat else ''} params {result.parameters:>9,}  retention {result.retention:.3f} "
        f"(fp32 {result.retention_fp32:.3f})  compression {result.compression:6.1f}x  latency "
        f"{result.latency_ms:.2f} ms ({result.int8_speedup_vs_fp32:.2f}x FP32)  {result.wall_seconds:.0f} s{flags}"
    )


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a completed trial meets the study's constraints (Optuna's: every value <= 0)."""
    return all(value <= 0 for value in trial.constraints.values())


def _student(config: TrialConfig) -> str:
    return f"{config.family} w={config.width:.2f} d={config.depth:.2f}"


class TrialRunner:
    """Propose, run and record trials of one open study; every driver uses one per process."""

    def __init__(
        self,
        resources: Resources,
        optuna_study: optuna.Study,
        *,
        emit: Callable[[str], None] = print,
        latency_lock: Path | None = None,
    ) -> None:
        self.resources = resources
        self.study: Study = resources.study
        self.optuna_study = optuna_study
        self.emit = emit
        self.latency_lock = latency_lock if latency_lock is not None else machine_latency_lock()
        self.teacher = resources.teacher_reference()
        self.last_skipped = False  # whether the last proposal was skipped before training (Budget counts it)
        self._measured: dict[str, dict] = {}  # architecture key -> its untrained measurement
        self._parameter_counts: dict[tuple, int] = {}  # (family, stem, width, depth) -> parameters

    # -- before training -------------------------------------------------------------------------

    def propose(self, trial: optuna.Trial) -> TrialConfig | None:
        """Sample the trial's config and store it; None when the pre-screen skipped it (recorded, to be
        told PRUNED: it never counts against the budget). Raises :class:`ProposalFailed` (with the error
        recorded) when the config cannot be sampled."""
        # Who runs it, first: if this process dies while sampling, its parent can still fail the trial.
        trial.set_user_attr("worker", worker_id())
        try:
            config = sample_config(trial, self.study)
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, which then fails
            error = f"sampling its settings failed: {type(exc).__name__}: {exc}"
            record_failure(trial, error)
            self.emit(f"trial {trial.number:>3}: FAILED ({error})")
            raise ProposalFailed(error) from exc
        record_start(trial, config, worker_id())
        self.last_skipped = False
        constraints = self.study.constraints
        if not (self.study.prescreen or constraints.architectural):
            return config
        measured = trial.user_attrs.get(CHOSEN_MEASUREMENT) or self._measure(config)
        violations = constraints.violations(measured["size_kb"], measured["latency_ms"])
        over = {key: value for key, value in violations.items() if value > 0}
        if over:
            for key, value in violations.items():
                trial.set_constraint(key, value)  # infeasible: constrained samplers learn the region
            measured_as = {
                "max_size_kb": ("size", measured["size_kb"], "KB"),
                "max_latency_ms": ("latency", measured["latency_ms"], "ms"),
            }
            reason = "; ".join(
                f"{what} {value:.3g} {unit} over constraints.{key} = {getattr(constraints, key):g}"
                for key, (what, value, unit) in measured_as.items()
                if key in over
            )
            skipped = {**measured, "reason": f"over budget: {reason}", "dominated_by": None}
        elif self.study.prescreen and (skipped := self._screen(measured)) is not None:
            pass
        else:
            return config
        record_prescreen(trial, skipped)
        self.last_skipped = True
        self.emit(
            f"trial {trial.number:>3}: skipped before training ({_student(config)}: {skipped['reason']})"
        )
        return None

    def _measure(self, config: TrialConfig) -> dict:
        """Size and INT8 latency of ``config``'s untrained student, measured once per architecture in
        this process: many sampled configs round to the same network (the quickstart-sized space's
        208 candidates were 89 distinct networks), and the methods and their settings do not change it."""
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        student = new_student(config, self.resources.data).eval()
        key = architecture_key(student, config)
        known = self._measured.get(key)
        if known is None:
            known = measure_student(student, config, self.resources.data, self.teacher, self.latency_lock)
            known["architecture"] = key
            self._measured[key] = known
            measured = dict(known)
        else:
            measured = {**known, "measured_before": True}
        measured["prescreen_seconds"] = time.perf_counter() - start
        return measured

    def choose_candidate(self) -> None:
        """With ``sampler.candidates`` M > 1 (and a completed trial to compare with): before the driver
        asks for its next trial, ask the sampler for M students, measure each untrained, record them
        (PRUNED: measured, never trained, never counted) and enqueue the one with the largest expected
        hypervolume gain, so the driver's next trial trains it with its measurement."""
        count = self.study.sampler.candidates
        if count <= 1:
            return
        points, feasible, reference = self._front_inputs()
        if not points:
            return
        constraints = self.study.constraints
        scored = []
        for _ in range(count):
            trial = self.optuna_study.ask()
            trial.set_user_attr("worker", worker_id())
            try:
                config = sample_config(trial, self.study)
                measured = self._measure(config)
            except Exception as exc:  # noqa: BLE001 - the candidate is dropped; the trial proper will say
                record_failure(trial, f"measuring a candidate failed: {type(exc).__name__}: {exc}")
                self.optuna_study.tell(trial, state=TrialState.FAIL)
                continue
            over = any(
                v > 0 for v in constraints.violations(measured["size_kb"], measured["latency_ms"]).values()
            )
            gain = (
                -1.0
                if over
                else expected_gain(
                    measured["compression"], measured["latency_ms"], points, feasible, reference
                )
            )
            measured["expected_gain"] = gain
            scored.append((gain, trial, config, measured))
        if not scored:
            return
        best = max(range(len(scored)), key=lambda i: scored[i][0])
        for i, (gain, trial, config, measured) in enumerate(scored):
            record_start(trial, config, worker_id())
            chosen = i == best
            reason = (
                f"candidate chosen (expected hypervolume gain {gain:.3g}): trained as a trial of its own"
                if chosen
                else f"candidate not chosen: expected hypervolume gain {gain:.3g}, below {scored[best][0]:.3g}"
            )
            record_prescreen(trial, {**measured, "reason": reason, "dominated_by": None, "candidate": True})
            self.optuna_study.tell(trial, state=TrialState.PRUNED)
        gain, trial, config, measured = scored[best]
        self.optuna_study.enqueue_trial(
            trial.params, user_attrs={CHOSEN_MEASUREMENT: measured}, skip_if_exists=False
        )

    def _front_inputs(self) -> tuple[list, list, tuple]:
        """What the strategy compares a candidate with: every completed trial's objective values, the
        feasible ones among them (the front is theirs), and the study's reference point."""
        completed = self._completed()
        points = [tuple(t.values) for t in completed]
        feasible = [tuple(t.values) for t in completed if _feasible(t)]
        reference = tuple(self.optuna_study.user_attrs["reference_point"][k] for k in OBJECTIVES)
        return points, feasible, reference

    def _screen(self, measured: dict) -> dict | None:
        """``measured`` with why, when the untrained student could not extend the front even at an
        optimistic retention (:mod:`autokd.strategy`); None when it should be trained."""
        points, feasible, reference = self._front_inputs()
        if not points:
            return None
        compression, latency = measured["compression"], measured["latency_ms"]
        bound = retention_bound(compression, points)
        if could_extend_front(compression, latency, feasible, reference, bound=bound):
            return None
        by = dominating((bound, compression, latency), feasible)
        numbers = [t.number for t in self._completed() if _feasible(t)]
        dominated_by = numbers[by] if by is not None else None
        why = (
            f"trial {dominated_by} is as small and as fast with retention >= {bound:.3f}, the most this "
            "student could reach"
            if dominated_by is not None
            else f"even at retention {bound:.3f} it would not improve on the reference point"
        )
        return {**measured, "reason": why, "dominated_by": dominated_by, "retention_bound": bound}

    # -- during training -------------------------------------------------------------------------

    def _parameters(self, config: TrialConfig) -> int:
        """The parameter count of ``config``'s student, built once per shape in this process."""
        shape = (config.family, config.stem, config.width, config.depth)
        if shape not in self._parameter_counts:
            self._parameter_counts[shape] = count_parameters(new_student(config, self.resources.data))
        return self._parameter_counts[shape]

    def _completed(self) -> list[optuna.trial.FrozenTrial]:
        return self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def early_stop(
        self, config: TrialConfig, history: list[float], seconds_so_far: float
    ) -> EarlyStop | None:
        """The median rule after epoch ``len(history)``: an :class:`EarlyStop` when the trial should stop."""
        rule = self.study.early_stopping
        epoch = len(history)
        if not rule.enabled or epoch >= config.epochs:
            return None
        # Families learn at different speeds: compare only with completed students of the same family.
        # And only with those no larger: a smaller student is below the median of larger ones by nature,
        # yet may extend the front on size; stopping it for that kept a search whose strategy proposes
        # small students from ever completing its budget (the reference study: 18 stopped in a row).
        parameters = self._parameters(config)
        histories = [
            t.user_attrs.get("val_accuracy_per_epoch", [])
            for t in self._completed()
            if t.params.get("family") == config.family
            and t.user_attrs.get("parameters", parameters) <= parameters
        ]
        median = should_stop(
            epoch,
            history[-1],
            histories,
            warmup_epochs=rule.warmup_epochs,
            min_completed_trials=rule.min_completed_trials,
        )
        if median is None:
            return None
        per_epoch = seconds_so_far / epoch
        return EarlyStop(epoch, list(history), per_epoch * (config.epochs - epoch), MEDIAN_RULE)

    def run(self, number: int, config: TrialConfig) -> Outcome:
        """Run the trial in this process, with the early-stopping rule after every epoch."""
        history: list[float] = []
        started = time.perf_counter()
        # A bar per trial on a terminal only (disable=None), under the study's bar.
        bar = tqdm(total=config.epochs, desc=f"trial {number}", unit="epoch", leave=False, disable=None)

        def on_epoch(epoch: int, val_accuracy: float) -> None:
            history.append(val_accuracy)
            bar.update(1)
            bar.set_postfix(val_top1=f"{val_accuracy:.4f}")
            stop = self.early_stop(config, history, time.perf_counter() - started)
            if stop is not None:
                raise TrialStopped(stop)

        try:
            result = run_trial(
                config,
                self.resources.data,
                self.teacher,
                on_epoch=on_epoch,
                latency_lock=self.latency_lock,
                artifact_dir=trial_dir(self.resources.run_dir, number),
                device=self.resources.device,
                amp=self.study.training.amp,
                cpu_bf16=self.study.training.cpu_bf16,
            )
        except TrialStopped as stopped:
            return Outcome(TrialState.PRUNED, stop=stopped.stop)
        except KeyboardInterrupt:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # not the trial's fault: every later trial would fail too; the search stops
            return Outcome(TrialState.FAIL, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a failed trial is a result, recorded with its message
            return Outcome(TrialState.FAIL, error=f"{type(exc).__name__}: {exc}")
        finally:
            bar.close()
        return Outcome(TrialState.COMPLETE, result=result)

    # -- after training --------------------------------------------------------------------------

    def record(self, trial: optuna.Trial, config: TrialConfig, outcome: Outcome) -> list[float] | None:
        """Store how the trial ended and say it on one line; return its objective values when COMPLETE."""
        if outcome.state == TrialState.COMPLETE:
            values = record_result(trial, outcome.result)
            result = outcome.result
            size_kb = self.teacher.weight_bytes / result.compression / 1000
            violations = self.study.constraints.violations(size_kb, result.latency_ms, result.retention)
            for key, value in violations.items():
                trial.set_constraint(key, value)
            self.emit(trial_line(trial.number, config, outcome.result))
            return values
        if outcome.state == TrialState.PRUNED and outcome.stop is not None:
            record_stop(trial, outcome.stop)
            stop = outcome.stop
            self.emit(
                f"trial {trial.number:>3}: stopped early ({_student(config)}: val top-1 "
                f"{stop.val_accuracy_per_epoch[-1]:.4f} at epoch {stop.epoch}, {stop.stopped_by})"
            )
            return None
        record_failure(trial, outcome.error or "no error message")
        self.emit(f"trial {trial.number:>3}: FAILED ({outcome.error})")
        return None

    def record_interrupted(self, trial: optuna.Trial) -> None:
        """Store that the user interrupted the trial (Ctrl-C); the study then fails it."""
        record_failure(trial, "interrupted by the user")

    def finish(self, trial: optuna.Trial, config: TrialConfig | None, outcome: Outcome) -> None:
        """Record and tell the study (for drivers that ask and tell rather than optimize)."""
        values = self.record(trial, config, outcome) if config is not None else None
        self.optuna_study.tell(trial, values=values, state=outcome.state)
