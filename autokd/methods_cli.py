"""``autokd methods list`` and ``autokd methods show NAME``: what distillation methods there are.

Both load every method the way a search does (built-ins, installed entry points) and, with
``--study FILE``, the files and folders that study names under ``extensions:``. ``autokd plugins``
is the 0.1 name of the command, kept for one release.
"""

from __future__ import annotations

import argparse
import inspect
import unicodedata
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


def printable(text: object) -> str:
    """``text`` safe for a terminal: control characters other than newline and tab (escape sequences
    that retitle the window, clear the screen or move the cursor) shown as escapes such as ``\\x1b``.

    Method names, kinds, hyperparameter names, docstrings and origins come from extension files, which
    anyone may have written.
    """
    return "".join(
        char if char in "\n\t" or unicodedata.category(char) != "Cc" else f"\\x{ord(char):02x}"
        for char in str(text)  # every control character (C0, DEL, C1) is below 0x100
    )


def _one_line(text: object) -> str:
    """:func:`printable`, with newlines and tabs escaped too: for a table row or a ``key: value`` line."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


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
        # One row per method: a newline or tab in a name would break the table, so it is escaped too.
        cells = (name, cls.kind, describe_needs(cls), hps)
        rows.append(tuple(_one_line(cell) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*padded, row[3]]))
    return 0


def _show(args: argparse.Namespace) -> int:
    from autokd.methods import METHODS
    from autokd.registry import RegistryError

    _load(args.study)
    try:
        cls = METHODS.get(args.name)
    except RegistryError as exc:  # exit 2 in autokd.cli.main; it lists the names extensions registered
        raise RegistryError(_one_line(exc)) from None
    name = _one_line(args.name)
    print(f"name:        {name}")
    print(f"kind:        {_one_line(cls.kind)}")
    print(f"needs:       {describe_needs(cls)}")
    print(f"loaded from: {_one_line(METHODS.origin(args.name))}")
    if cls.hyperparameters:
        print(f"hyperparameters (searched as {name}.<name>):")
        for key, spec in cls.hyperparameters.items():
            print(f"  {_one_line(describe_hyperparameter(key, spec))}")
    else:
        print("hyperparameters: none")
    print()
    # The class's own docstring: inspect.getdoc would fall back to Method's.
    own = cls.__dict__.get("__doc__")
    print(printable(inspect.cleandoc(own)) if own and isinstance(own, str) else "(no docstring)")
    return 0
