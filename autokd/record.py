"""A trial in the study's storage: the one writer every driver uses and the one reader of stored results.

Every trial carries ``config`` (its :class:`~autokd.trial.TrialConfig`) and ``worker`` from the moment
it starts, then exactly one of:

- COMPLETE: the fields of :class:`~autokd.trial.TrialResult` as user attributes, objectives as values;
- PRUNED by early stopping: ``stopped_at_epoch``, ``stopped_by``, ``seconds_saved`` and the validation
  accuracies it reached; PRUNED by the pre-screen: ``prescreened`` (which trial dominates it);
- FAIL: ``error``, one line. A trial a killed process left RUNNING is failed when the study is opened
  again, and its message is kept in the study attribute ``interrupted`` (Optuna's public API cannot
  set an attribute on a finished trial).

The report, export and the Python API read a run folder only through :func:`load_records`.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autokd.pareto import DIRECTIONS, OBJECTIVES  # noqa: F401 - re-exported for drivers
from autokd.storage import load_run_study
from autokd.trial import TrialConfig, TrialResult

INTERRUPTED = "interrupted"  # study attribute: {trial number: why it was failed when the study reopened}


@dataclass(frozen=True)
class EarlyStop:
    """Why and when a trial was stopped before its last epoch."""

    epoch: int
    val_accuracy_per_epoch: list[float]
    seconds_saved: float
    stopped_by: str


def record_start(trial: optuna.Trial, config: TrialConfig, worker: str) -> None:
    """Store what the trial will run, before it runs (so a failure or a kill still says what it was)."""
    trial.set_user_attr("config", dataclasses.asdict(config))
    trial.set_user_attr("worker", worker)


def record_result(trial: optuna.Trial, result: TrialResult) -> list[float]:
    """Store a completed trial's metrics; return its objective values in the study's order."""
    for key, value in result.as_attrs().items():
        trial.set_user_attr(key, value)
    return result.objectives()


def record_stop(trial: optuna.Trial, stop: EarlyStop) -> None:
    """Store why a trial was stopped early (it is then told PRUNED, never on the front)."""
    trial.set_user_attr("stopped_at_epoch", stop.epoch)
    trial.set_user_attr("val_accuracy_per_epoch", list(stop.val_accuracy_per_epoch))
    trial.set_user_attr("seconds_saved", stop.seconds_saved)
    trial.set_user_attr("stopped_by", stop.stopped_by)


def record_prescreen(trial: optuna.Trial, measured: dict) -> None:
    """Store the size and latency of a student skipped before training, and which trial dominates it."""
    trial.set_user_attr("prescreened", measured)


def record_failure(trial: optuna.Trial, error: str) -> None:
    """Store a failed trial's one-line error."""
    trial.set_user_attr("error", error)


def fail_interrupted(study: optuna.Study, message: str, *, worker: str | None = None) -> int:
    """Fail every trial left RUNNING (only safe when no other process runs trials), or only those of
    the dead process ``worker``; return how many."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if worker is None or t.user_attrs.get("worker") == worker
    ]
    if not stale:
        return 0
    notes = dict(study.user_attrs.get(INTERRUPTED, {}))
    for trial in stale:
        notes[str(trial.number)] = message
        study.tell(trial.number, state=TrialState.FAIL)
    study.set_user_attr(INTERRUPTED, notes)
    return len(stale)


@dataclass(frozen=True)
class TrialRecord:
    """One stored trial as the report and export see it."""

    number: int
    state: str
    values: list[float] | None  # the objectives, in OBJECTIVES' order, for a COMPLETE trial
    params: dict
    config: dict | None
    result: TrialResult | None
    error: str | None
    stop: EarlyStop | None
    prescreened: dict | None
    worker: str | None
    started: datetime.datetime | None
    finished: datetime.datetime | None
    attrs: dict = field(repr=False)
    constraints: dict = field(default_factory=dict)  # Optuna constraint values (feasible at <= 0)

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETE"


@dataclass(frozen=True)
class StudyRecord:
    """A study's fixed attributes and all its trials, as stored in its run folder."""

    name: str
    run_dir: Path
    settings: dict
    teacher: dict
    reference_point: dict
    data: dict
    executions: list[dict]
    trials: list[TrialRecord]
    extensions: list[str] = field(default_factory=list)  # extension files the study loaded (absolute)
    confirmations: dict = field(default_factory=dict)  # autokd confirm: {trial number: [run, ...]}
    baselines: dict = field(
        default_factory=dict
    )  # autokd confirm --baselines: {trial: {variant: [run, ...]}}

    def trial(self, number: int) -> TrialRecord:
        """Trial ``number``; ``KeyError`` when the study has none by that number."""
        for record in self.trials:
            if record.number == number:
                return record
        raise KeyError(number)


def run_epochs(run: dict, search_epochs: int | None) -> int | None:
    """The epochs a stored confirmation or baseline run trained for: runs stored before ``autokd confirm
    --epochs`` existed trained for the search's own budget, ``search_epochs``, and did not record it."""
    epochs = run.get("epochs", search_epochs)
    return None if epochs is None else int(epochs)


def _record(trial: optuna.trial.FrozenTrial, interrupted: dict) -> TrialRecord:
    attrs = dict(trial.user_attrs)
    result = TrialResult.from_attrs(attrs) if trial.state == TrialState.COMPLETE else None
    stop = None
    if "stopped_at_epoch" in attrs:
        stop = EarlyStop(
            epoch=int(attrs["stopped_at_epoch"]),
            val_accuracy_per_epoch=list(attrs.get("val_accuracy_per_epoch", [])),
            seconds_saved=float(attrs.get("seconds_saved") or 0.0),
            stopped_by=str(attrs.get("stopped_by", "median rule on validation accuracy")),
        )
    error = attrs.get("error") or interrupted.get(str(trial.number))
    if trial.state == TrialState.FAIL and not error:
        error = "no error was recorded"
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        values=list(trial.values) if trial.values is not None else None,
        params=dict(trial.params),
        config=attrs.get("config"),
        result=result,
        error=error if trial.state == TrialState.FAIL else None,
        stop=stop,
        prescreened=attrs.get("prescreened"),
        worker=attrs.get("worker"),
        started=trial.datetime_start,
        finished=trial.datetime_complete,
        attrs=attrs,
        constraints=dict(trial.constraints),
    )


def records_of(study: optuna.Study, run_dir: Path) -> StudyRecord:
    """The records of an open Optuna study."""
    attrs = study.user_attrs
    interrupted = attrs.get(INTERRUPTED, {})
    return StudyRecord(
        name=study.study_name,
        run_dir=run_dir,
        settings=attrs.get("study", {}),
        teacher=attrs.get("teacher", {}),
        reference_point=attrs.get("reference_point", {}),
        data=attrs.get("data", {}),
        executions=list(attrs.get("executions", [])),
        trials=[_record(t, interrupted) for t in study.get_trials(deepcopy=False)],
        extensions=list(attrs.get("extensions", [])),
        confirmations=dict(attrs.get("confirmations", {})),
        baselines=dict(attrs.get("baselines", {})),
    )


def load_records(run_dir: Path) -> StudyRecord:
    """Everything a study stored in ``run_dir`` (``FileNotFoundError``/``LookupError`` when there is none)."""
    run_dir = Path(run_dir)
    return records_of(load_run_study(run_dir), run_dir)
