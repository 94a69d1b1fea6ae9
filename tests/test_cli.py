"""The command line itself: version, help without torch, a study template and the schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autokd.cli import main
from autokd.config import load_study_file


def test_help_does_not_import_torch():
    code = "import sys; from autokd.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_version_prints_the_installed_version(capsys):
    import autokd

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"autokd {autokd.__version__}"


def test_init_writes_a_study_that_loads_with_the_defaults(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    assert main(["init", "mine", "--out", str(path)]) == 0
    study = load_study_file(path)
    assert study.name == "mine" and study.search_space.distillation_share == (0.7, 0.7)
    assert "# What each trial samples" in path.read_text()


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("keep me")
    assert main(["init", "mine", "--out", str(path)]) == 2
    assert path.read_text() == "keep me" and "pass --force" in capsys.readouterr().err


def test_init_checks_the_name_like_a_study_file(tmp_path, capsys):
    assert main(["init", "bad name!", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "field 'name'" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()


def test_schema_is_the_study_models_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Study" and "search_space" in schema["properties"]
