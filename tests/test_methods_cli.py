"""``autokd methods list`` and ``autokd methods show`` (``autokd plugins`` is the 0.1 alias)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from autokd.cli import main
from autokd.methods import METHODS

STUDY_PLUGIN = textwrap.dedent(
    '''
    from autokd.methods import Method, Hyperparameter, register_method


    @register_method("cli_study_demo")
    class CliStudyDemo(Method):
        """A plugin named by a study file (relation kind)."""

        kind = "relation"
        needs_teacher_logits = False
        needs_features = (-1,)
        hyperparameters = {"scale": Hyperparameter(low=0.5, high=2.0, default=1.0)}

        def forward(self, inputs):
            return inputs.student_features[-1].sum() * 0
    '''
)


@pytest.fixture
def study_with_plugins(tmp_path: Path) -> Path:
    """A study file in its own folder naming a plugin folder relative to that folder."""
    folder = tmp_path / "project"
    (folder / "my_plugins").mkdir(parents=True)
    (folder / "my_plugins" / "demo.py").write_text(STUDY_PLUGIN)
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "cli_demo", "extensions": ["my_plugins"]}))
    return study


def builtin_kinds() -> dict[str, str]:
    METHODS.load()
    return {
        name: cls.kind
        for name, cls in METHODS.items()
        if cls.__module__.startswith("autokd.methods.builtin.")
    }


def run(capsys, *argv: str, command: str = "methods") -> tuple[int, str, str]:
    code = main([command, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> dict[str, list[str]]:
    """Rows of the ``list`` table by plugin name, split on runs of two or more spaces."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()[1:]]
    return {row[0]: row for row in rows}


def test_list_has_a_header_and_one_row_per_plugin(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["NAME", "KIND", "NEEDS"]
    assert len(builtin_kinds()) == 11 and set(builtin_kinds()) <= set(table_rows(out))


def test_the_01_command_name_plugins_still_lists_them(capsys):
    code, out, _ = run(capsys, "list", command="plugins")
    assert code == 0 and "hinton_kd" in table_rows(out)


def test_list_shows_each_methods_kind(capsys):
    _, out, _ = run(capsys, "list")
    rows = table_rows(out)
    for name, kind in builtin_kinds().items():
        assert rows[name][1] == kind


def test_list_shows_what_each_plugin_needs(capsys):
    _, out, _ = run(capsys, "list")
    rows = table_rows(out)
    assert rows["hinton_kd"][2] == "teacher logits"
    assert rows["fitnets"][2] == "stages -2"
    assert rows["self_distillation_exits"][2] == "student stages -4,-3,-2"
    assert rows["tf_kd"][2] == "-"


def test_list_shows_hyperparameter_defaults_and_ranges(capsys):
    _, out, _ = run(capsys, "list")
    rows = table_rows(out)
    assert rows["dkd"][3] == "alpha=1 [0.25, 4, log]; beta=8 [0.25, 16, log]; temperature=4 [1, 8]"
    assert rows["hinton_kd"][3] == "temperature=4 [1, 8]"
    assert rows["fitnets"][3] == "beta=100 [10, 1000, log]"


def test_show_prints_the_docstring_defaults_and_origin(capsys):
    code, out, _ = run(capsys, "show", "rkd")
    assert code == 0
    assert "kind:        relation" in out
    assert f"loaded from: {METHODS.origin('rkd')}" in out
    assert "distance_weight=25 [1, 100, log]" in out
    assert "angle_weight=50 [2, 200, log]" in out
    assert "Park, Kim, Lu & Cho" in out


@pytest.mark.usefixtures("clean_registry")
def test_show_says_when_a_method_has_no_hyperparameters(capsys):
    from autokd.methods import Method, register_method

    register_method("autokd_test_bare")(type("Bare", (Method,), {"kind": "response", "__doc__": "Bare."}))
    _, out, _ = run(capsys, "show", "autokd_test_bare")
    assert "hyperparameters: none" in out


def test_show_unknown_method_exits_2_with_one_line(capsys):
    code, out, err = run(capsys, "show", "no_such_plugin")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("autokd: error: unknown distillation method 'no_such_plugin'; available: ")


@pytest.mark.usefixtures("clean_registry")
def test_list_with_study_loads_the_studys_plugin_folder(capsys, study_with_plugins):
    code, out, _ = run(capsys, "list", "--study", str(study_with_plugins))
    assert code == 0
    row = table_rows(out)["cli_study_demo"]
    assert row[1:] == ["relation", "stages -1", "scale=1 [0.5, 2]"]


@pytest.mark.usefixtures("clean_registry")
def test_show_with_study_names_the_file_it_was_loaded_from(capsys, study_with_plugins):
    code, out, _ = run(capsys, "show", "cli_study_demo", "--study", str(study_with_plugins))
    assert code == 0
    origin = (study_with_plugins.parent / "my_plugins" / "demo.py").resolve()
    assert f"loaded from: {origin}" in out
    assert "A plugin named by a study file (relation kind)." in out


def test_missing_study_file_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "list", "--study", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "study file not found" in err


@pytest.mark.usefixtures("clean_registry")
def test_show_prints_terminal_escape_sequences_of_a_docstring_as_visible_escapes(capsys):
    from autokd.methods import Method, register_method

    doc = "Retitles the window\x1b]0;pwned\x07 and clears it\x1b[2J.\n\nSecond paragraph."
    register_method("autokd_test_escapes")(type("Escapes", (Method,), {"kind": "response", "__doc__": doc}))
    code, out, _ = run(capsys, "show", "autokd_test_escapes")
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "Retitles the window\\x1b]0;pwned\\x07 and clears it\\x1b[2J.\n\nSecond paragraph." in out


@pytest.mark.usefixtures("clean_registry")
def test_list_prints_control_characters_of_names_as_visible_escapes_one_row_each(capsys):
    from autokd.methods import Hyperparameter, Method, register_method

    attrs = {"kind": "response", "hyperparameters": {"t\x1b[2J": Hyperparameter(low=1, high=2, default=1)}}
    register_method("autokd_test_\x1b]0;pwned\x07\nrow")(type("Named", (Method,), attrs))
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    row = table_rows(out)["autokd_test_\\x1b]0;pwned\\x07\\nrow"]
    assert row[3] == "t\\x1b[2J=1 [1, 2]"


@pytest.mark.usefixtures("clean_registry")
def test_show_of_an_unknown_name_escapes_the_names_extensions_registered(capsys):
    from autokd.methods import Method, register_method

    register_method("autokd_test_\x1b[2J")(type("Clear", (Method,), {"kind": "response"}))
    code, _, err = run(capsys, "show", "no_such_method")
    assert code == 2
    assert "\x1b" not in err and "autokd_test_\\x1b[2J" in err and len(err.strip().splitlines()) == 1
