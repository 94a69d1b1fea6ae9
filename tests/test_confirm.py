"""autokd confirm: the front retrained with new seeds, stored in the study, shown as mean ± std."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import autokd
from autokd.cli import main
from autokd.config import parse_study
from autokd.confirmation import (
    BASELINES,
    CONFIRMATIONS,
    SETTINGS,
    baseline_config,
    confirmation_seeds,
    front_to_confirm,
    setting_runs,
)
from autokd.deploy import MODEL_CARD
from autokd.quantize import top1
from autokd.record import load_records, run_epochs
from autokd.reporting import (
    RETRAINED_LEAD,
    SEARCHED_LEAD,
    baseline_comparison,
    baseline_table,
    confirmed_front,
    confirmed_settings,
    load_results,
    mean_std,
    recommend_confirmed,
    summary_markdown,
)
from autokd.resources import load_study_data
from autokd.storage import confirmation_dir, load_run_study
from autokd.trial import STUDENT_WEIGHTS, TrialConfig


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


def test_a_baseline_changes_the_loss_and_nothing_else():
    searched = TrialConfig(
        family="resnet", width=0.25, depth=0.5, methods=("dkd",), distillation_share=0.4, epochs=8, qat=True
    )
    hard, literature = (baseline_config(searched, v, seed=7) for v in ("hard_labels", "literature_kd"))
    assert hard.methods == () and hard.distillation_share == 0.0
    assert literature.methods == ("hinton_kd",) and literature.distillation_share == 0.9
    assert literature.method_params == {"hinton_kd": {"temperature": 4.0}}
    for config in (hard, literature):
        assert (config.family, config.width, config.depth, config.epochs, config.qat, config.seed) == (
            "resnet",
            0.25,
            0.5,
            8,
            True,
            7,
        )


@pytest.mark.slow
def test_baselines_train_over_the_same_seeds_as_the_searched_setting(confirmed_run):
    study = load_run_study(confirmed_run)
    ((number, runs),) = study.user_attrs[CONFIRMATIONS].items()
    searched_seeds = {study.trials[int(number)].user_attrs["config"]["seed"], *(r["seed"] for r in runs)}
    variants = study.user_attrs[BASELINES][number]
    assert set(variants) == {"hard_labels", "literature_kd"}
    assert all({r["seed"] for r in v} == searched_seeds for v in variants.values())
    assert len(study.trials) == 2  # never trials


@pytest.mark.slow
def test_the_report_puts_the_baselines_beside_the_searched_setting(confirmed_run, tmp_path):
    (row,) = baseline_comparison(load_results(confirmed_run)).to_dict("records")
    best = max(row["hard_labels_int8_mean"], row["literature_kd_int8_mean"])
    assert row["margin"] == pytest.approx(row["searched_int8_mean"] - best)
    out = autokd.report(confirmed_run, tmp_path)
    summary = (out / "summary.md").read_text()
    assert "## Searched settings against the usual ones (1 front points" in summary
    assert "hard labels only" in summary and "Hinton KD, T = 4, 0.9 / 0.1" in summary
    assert (out / "baselines.csv").exists()
    assert "Searched settings against the usual ones" in (out / "index.html").read_text()


@pytest.mark.slow
def test_a_longer_budget_trains_the_searchs_own_seed_again_and_records_its_epochs(longer_confirmed_run):
    study = load_run_study(longer_confirmed_run[0])
    ((number, runs),) = study.user_attrs[CONFIRMATIONS].items()
    own_seed = study.trials[int(number)].user_attrs["config"]["seed"]
    longer = [r for r in runs if r["epochs"] == 2]
    assert len(longer) == 2 and own_seed in {r["seed"] for r in longer}
    assert [r["seed"] for r in runs if r["epochs"] == 1] == confirmation_seeds(own_seed, 1)


@pytest.mark.slow
def test_the_report_keeps_each_training_budget_apart(longer_confirmed_run):
    frame = confirmed_front(load_results(longer_confirmed_run[0])).set_index("epochs")
    # at the search's budget its own run counts; at 2 epochs only the runs trained for 2
    assert frame.loc[1, "seeds"] == 2 and frame.loc[2, "seeds"] == 2
    assert frame["on_front_of_means"].all()  # one point per budget: each on its budget's front


@pytest.mark.slow
def test_baselines_at_a_longer_budget_are_compared_with_the_searched_setting_at_that_budget(
    longer_confirmed_run,
):
    (row,) = baseline_comparison(load_results(longer_confirmed_run[0])).to_dict("records")
    assert row["epochs"] == 2 and row["seeds"] == 2
    assert row["hard_labels_seeds"] == 2 and row["literature_kd_seeds"] == 2


@pytest.mark.slow
def test_confirmation_trains_every_setting_on_one_seed_before_the_next(longer_confirmed_run):
    run_dir, lines = longer_confirmed_run
    study = load_run_study(run_dir)
    (number,) = study.user_attrs[CONFIRMATIONS]
    own_seed = study.trials[int(number)].user_attrs["config"]["seed"]
    new_seed = confirmation_seeds(own_seed, 1)[0]
    trained = [re.search(r"trial \d+(.*) seed (\d+),", line).groups() for line in lines if "confirm " in line]
    settings = ["", " hard labels only", " Hinton KD, T = 4, 0.9 / 0.1"]
    assert trained == [(s, str(own_seed)) for s in settings] + [(s, str(new_seed)) for s in settings]


def test_confirm_with_no_epochs_is_one_line(capsys, tmp_path):
    assert main(["confirm", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs 0: give at least 1 epoch" in capsys.readouterr().err


def test_confirm_with_no_seeds_is_one_line(capsys, tmp_path):
    assert main(["confirm", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds 0: give at least 1" in capsys.readouterr().err


def test_confirm_of_a_folder_without_a_study_is_one_line(capsys, tmp_path):
    assert main(["confirm", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err


@pytest.mark.slow
def test_confirm_trial_picks_that_front_point_only(confirmed_run):
    records = load_records(confirmed_run)
    front = [config.number for config in front_to_confirm(records, None)]
    chosen = front_to_confirm(records, None, only=[front[-1]])
    assert [config.number for config in chosen] == [front[-1]]


@pytest.mark.slow
def test_confirm_trial_off_the_front_is_one_line_listing_the_front(confirmed_run, capsys):
    assert main(["confirm", str(confirmed_run), "--trial", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trial 99: not on the front" in err and "its front points are trials" in err and "\n" not in err


def test_a_figure_from_one_seed_says_so_instead_of_a_spread():
    assert mean_std(0.92014, float("nan"), 4) == "0.9201 (one seed)"
    assert mean_std(0.9315, 0.0006, 4) == "0.9315 ± 0.0006"


def test_a_run_stored_without_its_epochs_trained_for_the_searchs_budget():
    assert run_epochs({"seed": 7, "int8_accuracy": 0.9}, 12) == 12
    assert run_epochs({"seed": 7, "int8_accuracy": 0.9, "epochs": 60}, 12) == 60


def test_one_seed_per_setting_has_no_spread_to_beat():
    nan = float("nan")
    row = {"trial": 1, "epochs": 60, "family": "resnet", "compression": 125.0, "seeds": 1, "method": "tf_kd"}
    row |= {"searched_int8_mean": 0.9201, "searched_int8_std": nan, "margin": -0.0096, "largest_std": nan}
    row |= {"hard_labels_int8_mean": 0.9258, "hard_labels_int8_std": nan, "beats_baselines": False}
    row |= {"literature_kd_int8_mean": 0.9297, "literature_kd_int8_std": nan}
    (shown,) = baseline_table(pd.DataFrame([row])).to_dict("records")
    assert shown["lead > largest std"] == "n/a (one seed)" and shown["searched"] == "0.9201 (one seed)"


def _literature_kd_runs(run_dir):
    records = load_records(run_dir)
    ((number, variants),) = records.baselines.items()
    return records, int(number), variants["literature_kd"]


@pytest.mark.slow
def test_every_confirmation_run_keeps_its_student_weights(confirmed_run):
    records = load_records(confirmed_run)
    ((number, runs),) = records.confirmations.items()
    stored = [("searched", r) for r in runs]
    stored += [(v, r) for v, vruns in records.baselines[number].items() for r in vruns]
    for setting, run in stored:
        folder = confirmation_dir(confirmed_run, int(number), setting, run["epochs"], run["seed"])
        assert (folder / STUDENT_WEIGHTS).exists(), folder


@pytest.mark.slow
def test_a_confirmed_baseline_exports_with_the_accuracy_its_run_recorded(confirmed_run, tmp_path):
    records, number, runs = _literature_kd_runs(confirmed_run)
    run, out = runs[-1], tmp_path / "export"
    command = ["export", str(confirmed_run), "--trial", str(number), "--setting", "literature_kd"]
    assert main([*command, "--seed", str(run["seed"]), "--out", str(out)]) == 0
    card = json.loads((out / MODEL_CARD).read_text())
    assert card["confirmation"] == {"setting": "literature_kd", "epochs": run["epochs"], "seed": run["seed"]}
    assert card["settings"]["methods"] == ["hinton_kd"] and card["settings"]["distillation_share"] == 0.9
    assert card["metrics"]["recorded_by_study"]["int8_accuracy"] == run["int8_accuracy"]
    data = load_study_data(parse_study(records.settings))
    assert top1(autokd.load(out), data.test_x, data.test_y) == pytest.approx(run["int8_accuracy"], abs=0.001)


@pytest.mark.slow
def test_exporting_a_setting_with_several_runs_asks_for_one_and_exits_2(confirmed_run, capsys):
    _, number, runs = _literature_kd_runs(confirmed_run)
    command = ["export", str(confirmed_run), "--trial", str(number), "--setting", "literature_kd"]
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert f"{len(runs)} 'literature_kd' confirmation runs: choose one of" in err and "\n" not in err
    assert all(f"--seed {r['seed']}" in err for r in runs)


@pytest.mark.slow
def test_exporting_an_unknown_setting_lists_the_allowed_ones_and_exits_2(confirmed_run, capsys):
    _, number, _ = _literature_kd_runs(confirmed_run)
    assert main(["export", str(confirmed_run), "--trial", str(number), "--setting", "distilled"]) == 2
    assert f"--setting distilled: allowed: {', '.join(SETTINGS)}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_seed_without_a_setting_is_one_line(confirmed_run, capsys):
    _, number, runs = _literature_kd_runs(confirmed_run)
    assert main(["export", str(confirmed_run), "--trial", str(number), "--seed", str(runs[0]["seed"])]) == 2
    assert "--epochs and --seed choose an autokd confirm run: give --setting too" in capsys.readouterr().err


@pytest.mark.slow
def test_each_retrained_setting_is_one_row_over_its_seeds(confirmed_run):
    frame = confirmed_settings(load_results(confirmed_run)).set_index("setting")
    # the searched setting: the search's own run and 1 confirmation; each baseline: the same 2 seeds
    assert set(frame.index) == set(SETTINGS) and (frame["seeds"] == 2).all()


@pytest.mark.slow
def test_what_to_ship_exports_the_median_run_of_a_retrained_setting(confirmed_run):
    results = load_results(confirmed_run)
    (best, *_) = recommend_confirmed(results, confirmed_settings(results), floor=0.0)
    trial, setting = int(best.row["trial"]), best.row["setting"]
    runs = sorted(setting_runs(results, trial, setting), key=lambda r: r["retention"])
    median = runs[(len(runs) - 1) // 2]
    assert best.export_command.endswith(
        f"--trial {trial} --setting {setting} --epochs {median['epochs']} --seed {median['seed']}"
    )


@pytest.mark.slow
def test_a_retrained_setting_below_the_floor_is_not_recommended(confirmed_run):
    results = load_results(confirmed_run)
    settings = confirmed_settings(results)
    assert recommend_confirmed(results, settings, floor=settings["retention_mean"].max() + 0.01) == []


@pytest.mark.slow
def test_the_report_leads_with_retrained_settings_above_the_floor(confirmed_run):
    results = load_results(confirmed_run)
    results.settings.setdefault("objectives", {})["retention_floor"] = 0.0  # every setting clears it
    done = results.trials[results.trials["state"] == "COMPLETE"]
    summary = summary_markdown(results, done, done, 0.0)
    retrained, searched = summary.index(RETRAINED_LEAD), summary.index(SEARCHED_LEAD)
    assert retrained < searched < summary.index("## Pareto front")
    assert "--setting" in summary[retrained:searched] and "--setting" not in summary[searched:]
