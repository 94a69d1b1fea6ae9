"""``autokd plugins list`` and ``autokd plugins show NAME``: what distillation plugins there are.

Both load every plugin the way a search does (built-ins, installed entry points) and, with
``--study FILE``, the files and folders that study names under ``plugins:``.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from autokd.methods import METHODS, Method, Hyperparameter, load_methods


def add_plugin_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plugins`` command, with its ``list`` and ``show`` subcommands, to the ``autokd`` parser."""
    parser = subparsers.add_parser("plugins", help="list or describe the distillation plugins")
    commands = parser.add_subparsers(dest="plugins_command", required=True)
    study_help = "also load the plugin files and folders this study file names under 'plugins:'"

    listing = commands.add_parser("list", help="one line per plugin: name, kind, needs, hyperparameters")
    listing.add_argument("--study", type=Path, help=study_help)
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="a plugin's description, defaults and where it was loaded from")
    show.add_argument("name", help="plugin name, as in a study's search_space.methods")
    show.add_argument("--study", type=Path, help=study_help)
    show.set_defaults(handler=_show)


def _load(study: Path | None) -> None:
    paths: list[Path] = []
    if study is not None:
        from autokd.config import load_study_file

        paths = load_study_file(study).plugin_paths(study)
    load_methods(paths)


def describe_needs(cls: type[Method]) -> str:
    """What a plugin needs from the forward passes, e.g. ``teacher logits, stages -2,-1``.

    Stages are of both models, or ``student stages`` when the plugin reads no teacher features.
    """
    needs = []
    if cls.needs_teacher_logits:
        needs.append("teacher logits")
    if cls.needs_features:
        whose = "stages" if cls.needs_teacher_features else "student stages"
        needs.append(f"{whose} " + ",".join(str(i) for i in cls.needs_features))
    return ", ".join(needs) or "-"


def describe_hyperparameter(name: str, spec: Hyperparameter) -> str:
    """``name=default [low, high]``, with ``log`` when searched on a log scale."""
    scale = ", log" if spec.log else ""
    return f"{name}={spec.default:g} [{spec.low:g}, {spec.high:g}{scale}]"


def _list(args: argparse.Namespace) -> int:
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
