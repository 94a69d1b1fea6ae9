"""autokd's Python API: what the ``autokd`` command does, callable from Python.

    import autokd
    result = autokd.search("studies/quickstart.yaml")          # or backend="ray", workers=2, ...
    result.front                                               # the Pareto front, as pandas
    autokd.export(result.run_dir, trial=int(result.front.trial.iloc[0]))
    student = autokd.load("runs/quickstart/exports/trial-9")   # student(images) -> logits

Nothing here leaves process-wide state changed (torch threads, Optuna's log level) after it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autokd.config import Study, StudyFileError, load_study_file, parse_study

if TYPE_CHECKING:
    import pandas as pd

    from autokd.budget import StopReason
    from autokd.deploy import Export
    from autokd.quantize import DeployedModel
    from autokd.record import StudyRecord


class UsageError(ValueError):
    """Options that do not go together; the message says which."""


@dataclass
class StudyResult:
    """A study's stored results: all trials and the Pareto front as pandas, and where they live.

    ``stopped_reason`` and ``report_dir`` are set when it comes from :func:`search`.
    """

    run_dir: Path
    records: StudyRecord
    stopped_reason: StopReason | None = None
    failed_now: int = 0
    report_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.records.name

    @property
    def trials(self) -> pd.DataFrame:
        """Every trial, one row each (state, settings, metrics, flags, ``on_front``)."""
        from autokd.reporting import trials_frame

        return trials_frame(self.records)

    @property
    def front(self) -> pd.DataFrame:
        """The completed trials on the Pareto front, most compressed first."""
        trials = self.trials
        if not len(trials):
            return trials
        front = trials[(trials["state"] == "COMPLETE") & trials["on_front"]]
        return front.sort_values("compression", ascending=False).reset_index(drop=True)

    @property
    def completed(self) -> int:
        return sum(1 for t in self.records.trials if t.completed)


def _study(study: Study | str | Path | dict) -> tuple[Study, Path | None]:
    if isinstance(study, Study):
        return study, None
    if isinstance(study, dict):
        return parse_study(study), None
    return load_study_file(study), Path(study)


def check_options(
    backend: str, *, workers: int, storage: str | None, address: str | None, heartbeat_interval: int
) -> None:
    """Refuse option combinations that do not go together, in one line naming them."""
    from autokd.drivers import DRIVERS

    if backend not in DRIVERS:
        raise UsageError(f"backend {backend!r}: allowed: {', '.join(DRIVERS)}")
    if backend == "ray" and (workers != 1 or storage):
        raise UsageError("--workers and --storage belong to the optuna backend; Ray runs trials itself")
    if backend == "optuna" and address:
        raise UsageError("--address needs --backend ray")
    if workers < 1:
        raise UsageError(f"--workers {workers}: give 1 or more worker processes")
    if heartbeat_interval < 1:
        raise UsageError(f"--heartbeat-interval {heartbeat_interval}: give 1 second or more")
    if storage and not storage.startswith("postgresql"):
        raise UsageError(
            f"--storage {storage.split(':', 1)[0]}:...: give a postgresql:// URL "
            "(without --storage the study lives in the run folder's journal)"
        )


def search(
    study: Study | str | Path | dict,
    *,
    backend: str = "optuna",
    runs_dir: str | Path = "runs",
    reports_dir: str | Path | None = "reports",
    workers: int = 1,
    storage: str | None = None,
    heartbeat_interval: int = 60,
    address: str | None = None,
    progress: bool = True,
    log=print,
) -> StudyResult:
    """Run (or resume) a study until its budget or time limit, write its report, return its results.

    ``study`` is a :class:`~autokd.config.Study`, a study file's path, or a study document (dict).
    ``backend``: ``optuna`` (this machine; ``workers`` processes; ``storage`` a PostgreSQL URL that
    workers on several machines share) or ``ray`` (Ray Tune; ``address`` of a cluster, else a local
    Ray). ``reports_dir=None`` writes no report.
    """
    check_options(
        backend, workers=workers, storage=storage, address=address, heartbeat_interval=heartbeat_interval
    )
    study, study_path = _study(study)
    runs_root = Path(runs_dir)
    if backend == "ray":
        from autokd.drivers.ray import run as run_ray

        outcome = run_ray(study, runs_root=runs_root, study_path=study_path, address=address, log=log)
    else:
        from autokd.drivers.optuna import run as run_optuna

        outcome = run_optuna(
            study,
            runs_root=runs_root,
            study_path=study_path,
            log=log,
            progress=progress,
            workers=workers,
            storage_url=storage,
            heartbeat_interval=heartbeat_interval,
        )
    result = load_study(outcome.run_dir)
    result.stopped_reason = outcome.stopped_reason
    result.failed_now = outcome.failed_now
    if reports_dir is not None:
        result.report_dir = report(outcome.run_dir, reports_dir)
    return result


def load_study(run: str | Path) -> StudyResult:
    """The stored results of the study in run folder ``run`` (e.g. ``runs/quickstart``)."""
    from autokd.record import load_records
    from autokd.reporting import ReportError

    run_dir = Path(run)
    try:
        return StudyResult(run_dir, load_records(run_dir))
    except FileNotFoundError as exc:
        raise ReportError(f"{exc}; run 'autokd search STUDY' first") from None
    except LookupError as exc:
        raise ReportError(str(exc)) from None


def report(run: str | Path, reports_dir: str | Path = "reports") -> Path:
    """Write the report of the study in ``run`` to ``reports_dir/<study>/``; return that folder."""
    from autokd.reporting import write_report

    return write_report(Path(run), Path(reports_dir))


def confirm(
    run: str | Path,
    *,
    top: int | None = None,
    seeds: int = 2,
    baselines: bool = False,
    trials: list[int] | None = None,
    epochs: int | None = None,
    log=print,
) -> dict[str, list[dict]]:
    """Retrain the front of the study in ``run`` with ``seeds`` new seeds per point (the ``top`` points
    adding the most hypervolume, or the front points ``trials``; all by default), for ``epochs`` (default:
    the search's budget); stored in the study, shown by the report. With
    ``baselines``, also train each point's architecture on hard labels and with Hinton KD at T = 4,
    0.9 / 0.1, over the same seeds (:mod:`autokd.confirmation`)."""
    from autokd.confirmation import confirm as run_confirm

    return run_confirm(
        Path(run), top=top, seeds=seeds, baselines=baselines, trials=trials, epochs=epochs, log=log
    )


def export(
    run: str | Path,
    trial: int,
    *,
    format: str | None = None,
    out: str | Path | None = None,
    setting: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
) -> Export:
    """Write completed trial ``trial``'s INT8 student as a deployable artifact with its model card; with
    ``setting`` (``searched``, ``hard_labels`` or ``literature_kd``), the ``autokd confirm`` run of
    that setting, at ``epochs`` with ``seed`` where it has several."""
    from autokd.deploy import export_trial

    return export_trial(
        Path(run),
        trial,
        artifact_format=format,
        out=Path(out) if out else None,
        setting=setting,
        epochs=epochs,
        seed=seed,
    )


def load(path: str | Path, *, trust: bool = False) -> DeployedModel:
    """An exported INT8 student (export folder or artifact file): ``load(path)(images) -> logits``.

    ``.pt2`` artifacts run code when loaded: pass ``trust=True`` only for files you exported yourself.
    """
    from autokd.deploy import load as load_export

    return load_export(path, trust=trust)


def predict(export: str | Path, images, *, trust: bool = False) -> pd.DataFrame:
    """Class predictions of an exported student: ``images`` are image files or folders (a list), or
    pixels in [0, 1] / 0-255 as a numpy array or tensor (N, C, H, W) or (N, H, W); the model card's
    preprocessing (size, channels, per-channel mean and std) is applied. One row per image."""
    import pandas as pd

    from autokd.deploy import predict_images

    return pd.DataFrame(predict_images(export, images, trust=trust))


def list_methods() -> list[str]:
    """Names of the registered distillation methods (as ``search_space.methods`` takes them)."""
    from autokd.methods import METHODS

    return METHODS.names()


def list_families() -> list[str]:
    """Names of the registered student families."""
    from autokd.students import FAMILIES

    return FAMILIES.names()


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    from autokd.data import DATASETS

    return DATASETS.names()


def list_backends() -> list[str]:
    """Names of the registered INT8 quantization backends."""
    from autokd.quantize import BACKENDS

    return BACKENDS.names()


__all__ = [
    "StudyFileError",
    "StudyResult",
    "UsageError",
    "export",
    "list_backends",
    "list_datasets",
    "list_families",
    "list_methods",
    "load",
    "load_study",
    "report",
    "search",
]
