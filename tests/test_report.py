"""The report's decisions and formatting, on small tables built by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from autokd.cli import main
from autokd.figures import log_ticks
from autokd.reporting import (
    ReportError,
    StudyResults,
    _flags,
    _no_recommendation,
    readable,
    recommend,
    write_report,
)


def _results() -> StudyResults:
    teacher = {"model": "t", "latency": {"median_ms": 1.0}, "weight_bytes": 4_000_000, "test_accuracy": 0.9}
    return StudyResults("s", Path("runs/s"), pd.DataFrame(), teacher, {}, {}, [])


def _done() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": [1, 2, 3, 4],
            "family": ["resnet"] * 4,
            "width": [0.2] * 4,
            "depth": [0.5] * 4,
            "method": ["hinton_kd"] * 4,
            "retention": [0.99, 0.96, 0.97, 0.80],
            "compression": [50.0, 200.0, 100.0, 900.0],
            "latency_ms": [0.2, 0.3, 0.1, 0.05],
            "weight_bytes": [80_000, 20_000, 40_000, 4_000],
        }
    )


def test_recommends_the_smallest_fastest_and_best_student_above_the_floor():
    picks = {rec.reasons: int(rec.row["trial"]) for rec in recommend(_results(), _done(), floor=0.95)}
    assert picks == {("smallest",): 2, ("fastest",): 3, ("best retention",): 1}


def test_a_student_best_on_two_counts_is_recommended_once_with_both_reasons():
    done = _done()
    done.loc[done["trial"] == 2, "latency_ms"] = 0.01
    picks = {rec.reasons: int(rec.row["trial"]) for rec in recommend(_results(), done, floor=0.95)}
    assert picks[("smallest", "fastest")] == 2


def test_every_recommendation_carries_the_exact_export_command():
    rec = recommend(_results(), _done(), floor=0.95)[0]
    assert rec.export_command == f"autokd export runs/s --trial {int(rec.row['trial'])}"


def test_no_student_above_the_floor_says_so_and_names_the_best():
    done = _done()
    assert recommend(_results(), done, floor=0.999) == []
    assert "trial 1" in _no_recommendation(done, 0.999) and "0.990" in _no_recommendation(done, 0.999)


def test_a_latency_whose_iqr_is_large_against_its_median_is_flagged_noisy():
    flags = _flags(
        {"latency": {"median_ms": 0.16, "iqr_ms": 0.15}, "latency_fp32": {"median_ms": 0.1, "iqr_ms": 0.001}}
    )
    assert flags == ["noisy INT8 latency (IQR 94% of the median)"]


def test_counts_print_as_integers_and_ratios_with_an_x():
    frame = pd.DataFrame({"trial": [4.0], "parameters": [74850.0], "compression": [439.18]})
    assert readable(frame, ["trial", "parameters", "compression"]).iloc[0].tolist() == [
        "4",
        "74,850",
        "439.2x",
    ]


def test_log_axes_label_every_tick_in_full():
    ticks = log_ticks(pd.Series([60.0, 450.0]), "x")
    assert ticks["ticktext"] == ["50x", "100x", "200x", "500x"]


def _files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


@pytest.mark.parametrize("name", ["../evil", "sub/../../evil", "{tmp}/absolute-evil", ".hidden", "a" * 65])
def test_a_journal_study_name_that_is_no_study_name_writes_no_report(tmp_path, make_run, capsys, name):
    name = name.format(tmp=tmp_path)
    run_dir = make_run(tmp_path / "runs" / "crafted", name)
    before = _files_under(tmp_path)
    code = main(["report", str(run_dir), "--reports-dir", str(tmp_path / "reports" / "mine")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(run_dir / "optuna-journal.log") in err and repr(name) in err
    assert _files_under(tmp_path) == before  # nothing written, inside --reports-dir or out of it


def test_a_report_folder_that_resolves_outside_the_reports_dir_is_refused(tmp_path, make_run):
    run_dir = make_run(tmp_path / "runs" / "fine")
    reports = tmp_path / "reports"
    reports.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (reports / "fine").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ReportError, match="resolves outside --reports-dir"):
        write_report(run_dir, reports)
    assert not any((tmp_path / "elsewhere").iterdir())
