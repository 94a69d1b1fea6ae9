"""Study files as a user (or someone else) writes them: YAML's surprises and hostile input are refused."""

from __future__ import annotations

import pytest

from autokd.config import StudyFileError, load_study_file


def error_of(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "study.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(StudyFileError) as error:
        load_study_file(path)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_a_key_written_twice_is_an_error_not_the_last_value(tmp_path):
    assert "key 'seed' appears twice" in error_of(tmp_path, "name: a\nseed: 1\nseed: 2\n")


def test_a_leading_zero_number_is_refused_rather_than_read_as_octal(tmp_path):
    assert "leading zero" in error_of(tmp_path, "name: a\nseed: 010\n")


@pytest.mark.parametrize("text", ["name: a\nbudget: {trials: true}\n", "name: a\nprescreen: yes\n"])
def test_booleans_and_counts_do_not_stand_in_for_each_other(tmp_path, text):
    assert "Input should be a valid" in error_of(tmp_path, text)


def test_anchors_and_aliases_are_refused_so_an_alias_bomb_cannot_expand(tmp_path):
    bomb = "name: a\nx: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    assert "anchors and aliases are not allowed" in error_of(tmp_path, bomb)


def test_deep_nesting_is_one_line(tmp_path):
    assert "nested too deeply" in error_of(tmp_path, "name: a\nx: " + "[" * 5000 + "]" * 5000 + "\n")


def test_a_file_that_is_not_utf8_says_so(tmp_path):
    assert "not UTF-8 text" in error_of(tmp_path, b"name: \xff\xfe\n")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: a\nsearch_space: {width: [0.1, 100]}\n", "search_space.width"),
        ("name: a\nquantization: {calibration_batches: 100000}\n", "quantization.calibration_batches"),
        ("name: a\nobjectives: {latency_batch_size: 1000000}\n", "objectives.latency_batch_size"),
        ("name: a\nseed: -1\n", "seed"),
        ("name: a\nseed: 99999999999999\n", "seed"),
    ],
)
def test_sizes_counts_and_seeds_have_sane_bounds(tmp_path, text, field):
    assert f"field '{field}'" in error_of(tmp_path, text)


def test_an_ordinary_study_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nseed: 10\nprescreen: true\nbudget: {trials: 3, time_limit_minutes: 1.5}\n")
    study = load_study_file(path)
    assert (study.seed, study.prescreen, study.budget.trials, study.budget.time_limit_minutes) == (
        10,
        True,
        3,
        1.5,
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: a\nsearch_space: {distillation_share: [0.5, .nan]}\n", "search_space.distillation_share.1"),
        ("name: a\nsearch_space: {distillation_share: .nan}\n", "search_space.distillation_share.0"),
        ("name: a\nsearch_space: {width: [0.1, .inf]}\n", "search_space.width.1"),
        (
            "name: a\nsearch_space: {method_params: {hinton_kd: {temperature: [2, .inf]}}}\n",
            "search_space.method_params.hinton_kd.temperature.1",
        ),
        (
            "name: a\nsearch_space: {method_params: {hinton_kd: {temperature: .nan}}}\n",
            "search_space.method_params.hinton_kd.temperature.0",
        ),
        ("name: a\nteacher: {weight_decay: .inf}\n", "teacher.weight_decay"),
        ("name: a\nbudget: {time_limit_minutes: .inf}\n", "budget.time_limit_minutes"),
        (
            "name: a\nobjectives: {reference_point: {retention: .inf}}\n",
            "objectives.reference_point.retention",
        ),
        ("name: a\nparallel: {gpus_per_trial: .nan}\n", "parallel.gpus_per_trial"),
        ("name: a\nteacher_cache_max_gb: .inf\n", "teacher_cache_max_gb"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(tmp_path, text, field):
    message = error_of(tmp_path, text)
    assert f"field '{field}'" in message and "finite number" in message
