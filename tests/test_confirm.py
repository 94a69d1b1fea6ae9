"""autokd confirm: the front retrained with new seeds, stored in the study, shown as mean ± std."""

from __future__ import annotations

import pytest

import autokd
from autokd.cli import main
from autokd.confirmation import CONFIRMATIONS, confirmation_seeds
from autokd.reporting import confirmed_front, load_results
from autokd.storage import load_run_study


def test_confirmation_seeds_are_new_and_the_same_on_every_rerun():
    seeds = confirmation_seeds(3, 2)
    assert len(set(seeds)) == 2 and 3 not in seeds and seeds == confirmation_seeds(3, 2)


@pytest.mark.slow
def test_a_confirmation_is_stored_in_the_study_and_never_a_trial(confirmed_run):
    study = load_run_study(confirmed_run)
    (runs,) = study.user_attrs[CONFIRMATIONS].values()
    assert len(runs) == 1 and {"seed", "retention", "int8_accuracy"} <= set(runs[0])
    assert len(study.trials) == 2  # the search's trials only: the budget never counts a confirmation


@pytest.mark.slow
def test_confirming_again_trains_only_the_seeds_not_yet_run(confirmed_run):
    before = load_run_study(confirmed_run).user_attrs[CONFIRMATIONS]
    again = autokd.confirm(confirmed_run, top=1, seeds=1, log=lambda _: None)
    assert again == before


@pytest.mark.slow
def test_the_report_shows_confirmed_points_as_mean_and_std(confirmed_run, tmp_path):
    frame = confirmed_front(load_results(confirmed_run))
    assert len(frame) == 1 and frame["seeds"].iloc[0] == 2
    out = autokd.report(confirmed_run, tmp_path)
    summary = (out / "summary.md").read_text()
    assert "## Confirmed over seeds (1 front points" in summary and " ± " in summary
    assert (out / "confirmed.csv").exists()


def test_confirm_with_no_seeds_is_one_line(capsys, tmp_path):
    assert main(["confirm", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds 0: give at least 1" in capsys.readouterr().err


def test_confirm_of_a_folder_without_a_study_is_one_line(capsys, tmp_path):
    assert main(["confirm", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err
