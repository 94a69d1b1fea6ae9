"""The ``autokd`` command: a thin layer over :mod:`autokd.api` (search, report, export, predict, methods).

Parsing imports nothing heavy: torch and the libraries load only when a command runs, so ``--help``
answers at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from autokd.methods_cli import add_method_commands, printable


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can cause (bad input): one line on stderr and exit code 2, never a traceback."""
    from autokd.api import UsageError
    from autokd.config import StudyFileError
    from autokd.confirmation import ConfirmError
    from autokd.data import DatasetUnavailableError
    from autokd.deploy import ExportError
    from autokd.drivers import BackendUnavailableError
    from autokd.measure import LatencyLockError
    from autokd.quantize import QuantizationError
    from autokd.registry import ExtensionLoadError, RegistryError
    from autokd.reporting import ReportError
    from autokd.storage import StudyBusyError
    from autokd.teacher import TeacherFileError
    from autokd.teacher_cache import CacheSpaceError

    return (
        ConfirmError,
        CacheSpaceError,
        StudyBusyError,
        TeacherFileError,
        StudyFileError,
        DatasetUnavailableError,
        ExtensionLoadError,
        RegistryError,
        ReportError,
        ExportError,
        QuantizationError,
        BackendUnavailableError,
        UsageError,
        LatencyLockError,
    )


LOG = logging.getLogger("autokd")


def _configure_logging(args: argparse.Namespace) -> None:
    """Progress lines go to stdout through the ``autokd`` logger: ``--quiet`` keeps warnings only,
    ``--verbose`` adds debug lines."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def _search(args: argparse.Namespace) -> int:
    import autokd

    result = autokd.search(
        args.study,
        backend=args.backend,
        runs_dir=args.runs_dir,
        reports_dir=args.reports_dir,
        workers=args.workers,
        storage=args.storage,
        heartbeat_interval=args.heartbeat_interval,
        address=args.address,
        progress=not (args.no_progress or args.quiet),
        log=LOG.info,
    )
    if not result.completed and str(result.stopped_reason) == "time limit":
        print(
            "no trial finished within budget.time_limit_minutes (the report says what took the time): "
            "raise it, or run the same command again to resume"
        )
    from autokd.budget import MAX_CONSECUTIVE_SKIPS, StopReason

    if result.stopped_reason == StopReason.SKIPPED:
        print(
            f"the last {MAX_CONSECUTIVE_SKIPS} sampled students were all skipped before training (over the "
            "study's constraints, or unable to extend the front): widen the search space or the constraints"
        )
    print(
        f"{result.completed} completed trials (stopped by {result.stopped_reason}); "
        f"report: {result.report_dir / 'index.html'}"
    )
    return 0 if result.stopped_reason.ok else 1


def _report(args: argparse.Namespace) -> int:
    import autokd

    out = autokd.report(args.run_dir, args.reports_dir)
    print(f"report: {out / 'index.html'} (also summary.md, pareto.csv, trials.csv)")
    return 0


def _confirm(args: argparse.Namespace) -> int:
    import autokd

    autokd.confirm(
        args.run_dir,
        top=args.top,
        seeds=args.seeds,
        baselines=args.baselines,
        trials=args.trial,
        epochs=args.epochs,
        log=LOG.info,
    )
    out = autokd.report(args.run_dir, args.reports_dir)
    extra = ", 'Searched settings against the usual ones', baselines.csv" if args.baselines else ""
    print(
        f"confirmed; report: {out / 'index.html'} (summary.md: 'Confirmed over seeds'{extra}, confirmed.csv)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import autokd

    result = autokd.export(
        args.run_dir,
        args.trial,
        format=args.format,
        out=args.out,
        setting=args.setting,
        epochs=args.epochs,
        seed=args.seed,
    )
    recorded = result.card["metrics"]["recorded_by_study"].get("int8_accuracy")
    same = result.card["same_backend_as_study"]
    run = result.card.get("confirmation")
    what = f"trial {args.trial}" + (
        f" ({run['setting']}, {run['epochs']} epochs, seed {run['seed']})" if run else ""
    )
    print(
        f"exported {what} to {result.artifact} ({result.card['runtime']}); test top-1 of the artifact "
        f"{result.accuracy:.4f}"
        + (f", recorded by the study {recorded:.4f}" if same and recorded is not None else "")
        + f"; model card: {result.directory / 'model_card.json'}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from autokd.deploy import evaluate_export, predict_images

    if args.images:
        for row in predict_images(args.export_dir, list(args.images), trust=args.trust_pt2):
            print(f"{row['path']}\t{row['class']}\t{row['probability']:.3f}")
        return 0
    accuracy, card = evaluate_export(args.export_dir, args.split, trust=args.trust_pt2)
    print(
        f"{card['study']} trial {card['trial']} ({card['format']} on {card['runtime']}): "
        f"{args.split} top-1 {accuracy:.4f}"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from autokd.config import study_schema

    print(json.dumps(study_schema(), indent=2))
    return 0


def _init(args: argparse.Namespace) -> int:
    from autokd.config import StudyFileError, parse_study, study_template

    parse_study({"name": args.name})  # the name is checked the way a study file's is
    path = args.out or Path(f"{args.name}.yaml")
    if path.exists() and not args.force:
        raise StudyFileError(f"{path} exists; pass --force to overwrite it, or --out another file")
    path.write_text(study_template(args.name))
    print(
        f"wrote {path}: every field with its default and what it means; edit it, then `autokd search {path}`"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``autokd`` command."""
    import autokd

    parser = argparse.ArgumentParser(
        prog="autokd", description="Search distilled INT8 students and report their Pareto front."
    )
    parser.add_argument("--version", action="version", version=f"autokd {autokd.__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the result")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also debug lines")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run or resume a study file")
    search.add_argument("study", help="study file (YAML), e.g. studies/quickstart.yaml")
    search.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where run folders live (default: runs)"
    )
    search.add_argument(
        "--reports-dir", type=Path, default=Path("reports"), help="where reports go (default: reports)"
    )
    search.add_argument("--no-progress", action="store_true", help="no progress bar (per-trial lines remain)")
    search.add_argument(
        "--backend",
        default="optuna",
        help="optuna: trials in this machine's processes (default); ray: trials through Ray Tune",
    )
    search.add_argument(
        "--address",
        help="ray backend: address of a running Ray cluster (e.g. 10.0.0.5:6379); without it Ray starts locally",
    )
    search.add_argument(
        "--workers",
        type=int,
        default=1,
        help="optuna backend: worker processes on this machine sharing the study (default 1)",
    )
    search.add_argument(
        "--storage",
        help="optuna backend: database URL shared by workers on several machines "
        "(postgresql://user:password@host/db); the run folder gets a copy for the report",
    )
    search.add_argument(
        "--heartbeat-interval",
        type=int,
        default=60,
        help="with --storage: seconds between a running trial's heartbeats; a trial silent for 3 intervals "
        "is failed and run again (default 60)",
    )
    search.set_defaults(handler=_search)

    report = sub.add_parser("report", help="write the Pareto report of a run folder")
    report.add_argument("run_dir", help="run folder of a study, e.g. runs/quickstart")
    report.add_argument(
        "--reports-dir", type=Path, default=Path("reports"), help="where reports go (default: reports)"
    )
    report.set_defaults(handler=_report)

    confirm = sub.add_parser(
        "confirm", help="retrain the front's configurations with new seeds; the report shows mean ± std"
    )
    confirm.add_argument("run_dir", help="run folder of a study, e.g. runs/quickstart")
    confirm.add_argument(
        "--top", type=int, default=None, help="front points adding the most hypervolume (default: all)"
    )
    confirm.add_argument(
        "--trial",
        type=int,
        action="append",
        metavar="N",
        help="confirm front point N only, e.g. the one you will ship (repeat for several)",
    )
    confirm.add_argument("--seeds", type=int, default=2, help="new seeds per front point (default 2)")
    confirm.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train each run this many epochs instead of the search's budget (the search's own seed is "
        "trained again too; the report keeps each budget apart)",
    )
    confirm.add_argument(
        "--baselines",
        action="store_true",
        help="also train each point's architecture on hard labels and with Hinton KD (T = 4, 0.9 / 0.1), "
        "over the same seeds: is the search worth it?",
    )
    confirm.add_argument(
        "--reports-dir", type=Path, default=Path("reports"), help="where reports go (default: reports)"
    )
    confirm.set_defaults(handler=_confirm)

    export = sub.add_parser("export", help="write a trial's INT8 student as a deployable artifact")
    export.add_argument("run_dir", help="run folder of a study, e.g. runs/quickstart")
    export.add_argument("--trial", type=int, required=True, help="number of a completed trial")
    export.add_argument(
        "--format",
        default=None,
        help="artifact format of a registered quantization backend (onnx: ONNX Runtime, pt2: torch.export "
        "program for torch.compile); default: the study's backend",
    )
    export.add_argument("--out", type=Path, default=None, help="folder (default: RUN_DIR/exports/trial-N)")
    export.add_argument(
        "--setting",
        default=None,
        help="export an autokd confirm run instead of the search's: searched, hard_labels or literature_kd "
        "(the report's 'What to ship' gives the command)",
    )
    export.add_argument("--epochs", type=int, default=None, help="with --setting: the run's training epochs")
    export.add_argument("--seed", type=int, default=None, help="with --setting: the run's seed")
    export.set_defaults(handler=_export)

    predict = sub.add_parser(
        "predict", help="run an exported student on image files or folders, or on its study's test split"
    )
    predict.add_argument("export_dir", help="an export folder (holding model_card.json)")
    predict.add_argument(
        "images",
        nargs="*",
        help="image files or folders: prints each image's class and probability (default: the study's split)",
    )
    predict.add_argument("--split", choices=["test", "val"], default="test")
    predict.add_argument(
        "--trust-pt2",
        action="store_true",
        help="load a .pt2 artifact (loading one runs code stored in it: only for files you exported)",
    )
    predict.set_defaults(handler=_predict)
    add_method_commands(sub)

    schema = sub.add_parser("schema", help="print the study file's JSON schema (for editors and validators)")
    schema.set_defaults(handler=_schema)

    init = sub.add_parser("init", help="write a commented study file to start from")
    init.add_argument("name", help="the study's name (letters, digits, '_', '-', '.')")
    init.add_argument("--out", type=Path, default=None, help="file to write (default: NAME.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input (one line on stderr, no traceback)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("autokd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            # Messages quote file contents (study names, extension errors): never raw escapes.
            print(f"autokd: error: {printable(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            from autokd.storage import disk_full_message

            print(f"autokd: error: {disk_full_message(exc)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
