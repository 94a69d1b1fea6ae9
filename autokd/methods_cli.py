"""``autokd methods list`` and ``autokd methods show NAME``: what distillation methods there are.

Both load every method the way a search does (built-ins, installed entry points) and, with
``--study FILE``, the files and folders that study names under ``extensions:``. ``autokd plugins``
is the 0.1 name of the command, kept for one release.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path


def add_method_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``methods`` command (alias ``plugins``), with ``list`` and ``show``, to the ``autokd`` parser."""
    parser = subparsers.add_parser(
        "methods", aliases=["plugins"], help="list or describe the distillation methods"
    )
    commands = parser.add_subparsers(dest="methods_command", required=True)
    study_help = "also load the extension files and folders this study file names under 'extensions:'"

    listing = commands.add_parser("list", help="one line per method: name, kind, needs, hyperparameters")
    listing.add_argument("--study", type=Path, help=study_help)
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="a method's description, defaults and where it was loaded from")
    show.add_argument("name", help="method name, as in a study's search_space.methods")
    show.add_argument("--study", type=Path, help=study_help)
    show.set_defaults(handler=_show)


def _load(study: Path | None) -> None:
    from autokd.methods import load_methods

    paths: list[Path] = []
    if study is not None:
        from autokd.config import load_study_file

        paths = load_study_file(study).extension_paths(study)
    load_methods(paths)


def describe_needs(cls) -> str:
    """What a method (class) needs from the forward passes, e.g. ``teacher logits, stages -2,-1``.

    Stages are of both models, or ``student stages`` when the method reads no teacher features.
    """
    needs = []
    if cls.needs_teacher_logits:
        needs.append("teacher logits")
    if cls.needs_features:
        whose = "stages" if cls.needs_teacher_features else "student stages"
        needs.append(f"{whose} " + ",".join(str(i) for i in cls.needs_features))
    return ", ".join(needs) or "-"


def describe_hyperparameter(name: str, spec) -> str:
    """``name=default [low, high]``, with ``log`` when searched on a log scale."""
    scale = ", log" if spec.log else ""
    return f"{name}={spec.default:g} [{spec.low:g}, {spec.high:g}{scale}]"


def _list(args: argparse.Namespace) -> int:
    from autokd.methods import METHODS

    _load(args.study)
    rows = [("NAME", "KIND", "NEEDS", "HYPERPARAMETERS (default [low, high])")]
    for name in METHODS.names():
        cls = METHODS.get(name)
        hps = "; ".join(describe_hyperparameter(k, s) for k, s in cls.hyperparameters.items()) or "-"
        rows.append((name, cls.kind, describe_needs(cls), hps))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*padded, row[3]]))
    return 0


def _show(args: argparse.Namespace) -> int:
    from autokd.methods import METHODS

    _load(args.study)
    cls = METHODS.get(args.name)  # RegistryError (unknown name) becomes exit 2 in autokd.cli.main
    print(f"name:        {args.name}")
    print(f"kind:        {cls.kind}")
    print(f"needs:       {describe_needs(cls)}")
    print(f"loaded from: {METHODS.origin(args.name)}")
    if cls.hyperparameters:
        print(f"hyperparameters (searched as {args.name}.<name>):")
        for key, spec in cls.hyperparameters.items():
            print(f"  {describe_hyperparameter(key, spec)}")
    else:
        print("hyperparameters: none")
    print()
    # The class's own docstring: inspect.getdoc would fall back to Method's.
    own = cls.__dict__.get("__doc__")
    print(inspect.cleandoc(own) if own else "(no docstring)")
    return 0
