"""The shipped smoke study end to end through the CLI, and the report it writes."""

from __future__ import annotations

import pandas as pd
import pytest

from autokd.cli import main


@pytest.mark.slow
def test_smoke_study_completes_its_budget(smoke_run):
    code, root = smoke_run
    trials = pd.read_csv(root / "reports" / "smoke" / "trials.csv")
    assert code == 0 and (trials["state"] == "COMPLETE").sum() == 4


@pytest.mark.slow
def test_report_marks_a_non_empty_front_of_completed_trials(smoke_run):
    _, root = smoke_run
    front = pd.read_csv(root / "reports" / "smoke" / "pareto.csv")
    assert len(front) >= 1 and (front["state"] == "COMPLETE").all() and front["on_front"].all()


@pytest.mark.slow
def test_summary_has_teacher_hypervolume_and_definitions(smoke_run):
    _, root = smoke_run
    summary = (root / "reports" / "smoke" / "summary.md").read_text()
    for needle in (
        "## What to ship",
        "hypervolume",
        "accuracy retention",
        "compression ratio",
        "latency",
        "## Pareto front",
        "## INT8 deployment",
        "runtime: onnxruntime",
    ):
        assert needle in summary


@pytest.mark.slow
def test_report_names_the_stem_each_student_was_built_with(smoke_run):
    _, root = smoke_run
    trials = pd.read_csv(root / "reports" / "smoke" / "trials.csv")
    stems = dict(zip(trials["family"], trials["stem"], strict=False))
    # the smoke study's 32-pixel digits give ResNet its small-image stem; ConvNeXt has only its own
    assert stems == {"resnet": "small", "convnext": "own"}


@pytest.mark.slow
def test_html_report_is_self_contained_plotly(smoke_run):
    _, root = smoke_run
    page = (root / "reports" / "smoke" / "index.html").read_text()
    assert "plotly" in page.lower() and '<script src="http' not in page and "Pareto front" in page


@pytest.mark.slow
def test_report_command_rewrites_the_report_from_the_run_folder(smoke_run, tmp_path):
    _, root = smoke_run
    assert main(["report", str(root / "runs" / "smoke"), "--reports-dir", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "pareto.csv").exists()


def test_report_on_a_missing_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "runs" / "nothing"), "--reports-dir", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err
