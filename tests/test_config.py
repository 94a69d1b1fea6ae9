"""Study-file validation: every invalid file is one line naming the field, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autokd.cli import main
from autokd.config import StudyFileError, load_study_file, parse_study

REPO = Path(__file__).resolve().parents[1]


def error_of(document: object) -> str:
    with pytest.raises(StudyFileError) as info:
        parse_study(document, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_top_level_key_is_an_error_listing_allowed_fields():
    message = error_of({"name": "a", "epochs": 3})
    assert "unknown field 'epochs'" in message and "budget" in message


def test_unknown_nested_key_names_its_section():
    assert "unknown field 'data.subsample'" in error_of({"name": "a", "data": {"subsample": 10}})


def test_reversed_range_names_field_and_value():
    message = error_of({"name": "a", "search_space": {"width": [0.5, 0.1]}})
    assert (
        "search_space.width" in message and "[0.5, 0.1]" in message and "low 0.5 is above high 0.1" in message
    )


def test_non_positive_range_is_rejected():
    assert "must be > 0" in error_of({"name": "a", "search_space": {"width": [0, 0.5]}})


def test_sampler_kind_lists_allowed_values():
    message = error_of({"name": "a", "sampler": {"kind": "cmaes"}})
    assert "sampler.kind" in message and "'cmaes'" in message and "'tpe'" in message


def test_stem_lists_allowed_values():
    message = error_of({"name": "a", "search_space": {"stem": "tiny"}})
    assert "search_space.stem" in message and "'tiny'" in message and "'small'" in message


def test_missing_name_is_reported():
    assert "field 'name' is required" in error_of({"seed": 1})


def test_budget_trials_must_be_positive():
    assert "budget.trials" in error_of({"name": "a", "budget": {"trials": 0}})


def test_image_size_below_8_is_rejected():
    assert "data.image_size" in error_of({"name": "a", "data": {"image_size": 4}})


def test_document_must_be_a_mapping():
    assert "must be a YAML mapping" in error_of(["name", "a"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\ndata: [unclosed\n")
    with pytest.raises(StudyFileError, match="not valid YAML at line"):
        load_study_file(path)


def test_defaults_fill_a_minimal_study():
    study = parse_study({"name": "minimal"})
    assert study.budget.trials >= 1 and study.objectives.latency_threads == 1


def test_a_study_without_a_sampler_gets_autokds_strategy():
    study = parse_study({"name": "minimal"})
    assert (study.sampler.kind, study.sampler.candidates, study.prescreen) == ("random", 8, True)


def test_teacher_key_changes_with_teacher_and_data_but_not_search_space():
    base = parse_study({"name": "a"})
    assert base.teacher_key() == parse_study({"name": "b", "budget": {"trials": 99}}).teacher_key()
    assert base.teacher_key() != parse_study({"name": "a", "teacher": {"epochs": 9}}).teacher_key()
    assert base.teacher_key() != parse_study({"name": "a", "data": {"train_subsample": 100}}).teacher_key()


def test_random_erasing_gives_the_teacher_its_own_key_and_off_keeps_the_old_one():
    base = parse_study({"name": "a"})
    assert base.teacher_key() == parse_study({"name": "a", "teacher": {"random_erasing": 0}}).teacher_key()
    assert base.teacher_key() != parse_study({"name": "a", "teacher": {"random_erasing": 0.5}}).teacher_key()


def test_random_erasing_above_one_names_the_field():
    assert "teacher.random_erasing" in error_of({"name": "a", "teacher": {"random_erasing": 1.5}})


def test_shipped_studies_are_valid():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        load_study_file(path)


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbudget: {trials: -1}\n")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "budget.trials" in err and "-1" in err


def test_unknown_family_exits_2_naming_allowed_families(tmp_path, capsys):
    path = tmp_path / "fam.yaml"
    path.write_text("name: fam\ndata: {dataset: digits}\nsearch_space: {families: [resnet, lenet]}\n")
    assert main(["search", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "search_space.families.1" in err and "'lenet'" in err and "convnext" in err


def test_cli_prints_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "autokd.cli", "search", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown field 'bogus'" in result.stderr


def test_qat_accepts_a_choice_and_lists_it_without_duplicates():
    study = parse_study({"name": "q", "budget": {"epochs": 3}, "quantization": {"qat": [True, False, True]}})
    assert study.quantization.qat_choices == [False, True]


@pytest.mark.parametrize("value", ["maybe", [], [False, 1]])
def test_qat_rejects_anything_but_booleans_in_one_line(value):
    with pytest.raises(StudyFileError, match=r"field 'quantization.qat' = .*: use true, false, or a list"):
        parse_study({"name": "q", "quantization": {"qat": value}})


def test_qat_must_leave_at_least_one_fp32_epoch():
    with pytest.raises(
        StudyFileError, match=r"field 'quantization.qat_epochs' = 3: must be below budget.epochs \(3\)"
    ):
        parse_study(
            {"name": "q", "budget": {"epochs": 3}, "quantization": {"qat": [False, True], "qat_epochs": 3}}
        )


def test_the_default_backend_is_onnx_runtime():
    assert parse_study({"name": "q"}).quantization.backend == "onnxruntime"


def test_parallel_settings_name_the_field():
    assert "parallel.max_concurrent_trials" in error_of(
        {"name": "a", "parallel": {"max_concurrent_trials": 0}}
    )


def test_early_stopping_has_one_rule_for_both_backends():
    # ASHA's reduction factor is gone: the median rule runs on both backends
    assert "field 'early_stopping.reduction_factor' is gone: ASHA is no longer used" in error_of(
        {"name": "a", "early_stopping": {"reduction_factor": 3}}
    )


@pytest.mark.parametrize("field", ["temperature", "loss_weight"])
def test_a_01_study_with_a_shared_temperature_or_loss_weight_is_told_where_they_went(field):
    message = error_of({"name": "a", "search_space": {field: [1, 4]}})
    assert f"field 'search_space.{field}' is gone" in message and "\n" not in message


@pytest.mark.parametrize("share", [[0.2, 1.0], [-0.1, 0.5], 1.5])
def test_a_distillation_share_outside_zero_to_one_is_refused(share):
    assert "the distillation share must lie in [0, 1)" in error_of(
        {"name": "a", "search_space": {"distillation_share": share}}
    )


def test_a_single_distillation_share_is_a_fixed_setting():
    study = parse_study({"name": "a", "search_space": {"distillation_share": 0.7}})
    assert study.search_space.distillation_share == (0.7, 0.7)


def test_the_01_key_plugins_still_names_extension_files():
    assert parse_study({"name": "a", "plugins": ["mine.py"]}).extensions == ["mine.py"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--address", "10.0.0.5:6379"], "--address needs --backend ray"),
        (["--backend", "ray", "--workers", "2"], "belong to the optuna backend"),
        (["--storage", "sqlite:///study.db"], "give a postgresql:// URL"),
        (["--workers", "0"], "--workers 0"),
    ],
)
def test_options_that_do_not_go_together_exit_2_with_one_line(tmp_path, capsys, options, needle):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\n")
    assert main(["search", str(path), "--runs-dir", str(tmp_path / "runs"), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
