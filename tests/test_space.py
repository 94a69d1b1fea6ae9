"""Sampling the search space into a TrialConfig, and checking a study against the registries."""

from __future__ import annotations

from dataclasses import asdict

import optuna
import pytest

from autokd.config import StudyFileError, parse_study
from autokd.space import check_study, sample_config
from autokd.trial import TrialConfig

STUDENT = {"family": "resnet", "width": 0.2, "depth": 0.5}


def sampled(study: dict, **params) -> TrialConfig:
    if params.get("method") == "none":
        study["search_space"]["methods"] = ["none", *study["search_space"]["methods"]]
    return sample_config(optuna.trial.FixedTrial({**STUDENT, **params}), parse_study(study))


def test_qat_is_a_searchable_choice(tiny_study):
    tiny_study["quantization"].update(qat=[False, True], qat_epochs=1)
    tiny_study["budget"]["epochs"] = 2
    common = {"method": "none"}
    configs = [sampled(tiny_study, **common, qat=qat) for qat in (False, True)]
    assert [c.qat for c in configs] == [False, True] and configs[1].qat_epochs == 1


@pytest.mark.parametrize(
    ("image_size", "choice", "stem"),
    [(32, "auto", "small"), (96, "auto", "imagenet"), (32, "imagenet", "imagenet"), (28, "full", "full")],
)
def test_a_sampled_student_gets_the_stem_for_the_studys_images(tiny_study, image_size, choice, stem):
    tiny_study["data"]["image_size"] = image_size
    tiny_study["search_space"]["stem"] = choice
    assert sampled(tiny_study, method="none").stem == stem


def test_temperature_is_sampled_as_the_methods_own_hyperparameter(tiny_study):
    config = sampled(tiny_study, method="hinton_kd", distillation_share=0.6, **{"hinton_kd.temperature": 3.0})
    assert config.method_params == {"hinton_kd": {"temperature": 3.0}}
    assert config.distillation_share == 0.6


def test_a_method_without_temperature_samples_none(tiny_study):
    tiny_study["search_space"].update(methods=["fitnets"], method_params={})
    config = sampled(tiny_study, method="fitnets", distillation_share=0.6, **{"fitnets.beta": 50.0})
    assert config.method_params == {"fitnets": {"beta": 50.0}}


def test_no_distillation_means_no_share_and_no_method_parameters(tiny_study):
    tiny_study["search_space"]["methods"] = ["none", "hinton_kd"]
    config = sampled(tiny_study, method="none")
    assert (config.methods, config.distillation_share, config.method_params) == ((), 0.0, {})


def test_combined_methods_get_weights_that_sum_to_one(tiny_study):
    tiny_study["search_space"]["methods"] = ["fitnets+hinton_kd"]
    params = {"fitnets.weight": 0.2, "hinton_kd.weight": 0.6, "fitnets.beta": 100.0}
    config = sampled(
        tiny_study,
        method="fitnets+hinton_kd",
        distillation_share=0.7,
        **params,
        **{"hinton_kd.temperature": 4.0},
    )
    assert config.method_weights == pytest.approx({"fitnets": 0.25, "hinton_kd": 0.75})


def test_a_fixed_share_and_a_fixed_temperature_cost_the_sampler_no_dimension(tiny_study):
    tiny_study["search_space"].update(distillation_share=0.7, method_params={"hinton_kd": {"temperature": 4}})
    study = parse_study(tiny_study)
    trial = optuna.create_study(directions=["maximize"] * 3).ask()
    config = sample_config(trial, study)
    assert (config.distillation_share, config.method_params["hinton_kd"]["temperature"]) == (0.7, 4)
    assert "distillation_share" not in trial.params and "hinton_kd.temperature" not in trial.params


def test_method_params_narrow_the_methods_range(tiny_study):
    tiny_study["search_space"]["method_params"] = {"hinton_kd": {"temperature": [2.0, 3.0]}}
    study = parse_study(tiny_study)
    sampler = optuna.samplers.RandomSampler(seed=0)
    optuna_study = optuna.create_study(directions=["maximize"] * 3, sampler=sampler)
    temperatures = [
        sample_config(optuna_study.ask(), study).method_params["hinton_kd"]["temperature"] for _ in range(20)
    ]
    assert all(2.0 <= t <= 3.0 for t in temperatures)


@pytest.mark.parametrize(
    ("method_params", "needle"),
    [
        ({"dkd": {"alpha": [1, 2]}}, "'dkd' is not among search_space.methods"),
        (
            {"hinton_kd": {"beta": [1, 2]}},
            "method 'hinton_kd' has no such hyperparameter; it has: temperature",
        ),
        ({"hinton_kd": {"temperature": [0.5, 2]}}, "must lie within [1, 8]"),
    ],
)
def test_bad_method_params_are_one_line_errors_naming_the_field(tiny_study, method_params, needle):
    tiny_study["search_space"]["method_params"] = method_params
    with pytest.raises(StudyFileError, match="search_space.method_params") as error:
        check_study(parse_study(tiny_study))
    assert needle in str(error.value)


def test_a_config_stored_before_the_stem_choice_rebuilds_with_the_imagenet_stem():
    stored = asdict(TrialConfig("resnet", 0.25, 0.5))
    del stored["stem"]
    assert TrialConfig.from_dict(stored).stem == "imagenet"


def test_a_config_stored_by_autokd_01_rebuilds_with_its_temperature_and_share():
    stored = {
        "family": "resnet",
        "width": 0.25,
        "depth": 0.5,
        "methods": ["hinton_kd"],
        "temperature": 3.0,
        "loss_weight": 1.0,
        "plugin_params": {"hinton_kd": {}},
    }
    config = TrialConfig.from_dict(stored)
    assert config.method_params == {"hinton_kd": {"temperature": 3.0}}
    assert config.distillation_share == pytest.approx(0.5)  # CE + 1 x KD is the 50/50 mix


def test_an_unknown_teacher_model_is_refused_with_close_timm_names(tiny_study):
    tiny_study["teacher"]["model"] = "resnet10_typo"
    with pytest.raises(StudyFileError) as error:
        check_study(parse_study(tiny_study))
    message = str(error.value)
    assert message.startswith("field 'teacher.model' = 'resnet10_typo': not a timm model; close matches: ")
    assert "resnet10t" in message and "\n" not in message


def test_a_teacher_model_with_a_pretrained_tag_passes_the_check(tiny_study):
    tiny_study["teacher"]["model"] = "resnet10t.c3_in1k"
    check_study(parse_study(tiny_study))  # no error: timm builds it (the tag only picks weights)


def test_a_fixed_timm_student_costs_the_sampler_no_width_or_depth(tiny_study):
    tiny_study["search_space"]["families"] = ["timm:mobilenetv3_small_050"]
    trial = optuna.create_study(directions=["maximize"] * 3).ask()
    config = sample_config(trial, parse_study(tiny_study))
    assert config.family == "timm:mobilenetv3_small_050" and (config.width, config.depth) == (1.0, 1.0)
    assert "width" not in trial.params and "depth" not in trial.params


def test_an_unknown_timm_student_is_refused_naming_the_field(tiny_study):
    tiny_study["search_space"]["families"] = ["resnet", "timm:resnet_typo18"]
    with pytest.raises(
        StudyFileError,
        match=r"field 'search_space.families.1' = 'timm:resnet_typo18': 'resnet_typo18' is not a timm model",
    ):
        check_study(parse_study(tiny_study))
