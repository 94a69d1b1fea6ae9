"""Each family maps width and depth to its real timm constructor arguments."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import VisionTransformer

from autokd.students import FAMILIES, build_student, count_parameters, get_family, stem_for
from autokd.students.convnext import convnext_arguments
from autokd.students.resnet import resnet_arguments

FAMILY_NAMES = [
    "resnet",
    "mobilenetv3",
    "convnext",
    "efficientnet_lite",
    "mobilenetv3_minimal",
    "ghostnet",
    "vit",
    "mobilenetv4",
]


def blocks(model) -> int:
    """Residual/inverted-residual/transformer blocks in a timm model, counted by the family's own structure."""
    if isinstance(model, VisionTransformer):
        return len(model.blocks)
    if hasattr(model, "layer1"):
        return sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    if hasattr(model, "stages"):
        return sum(len(stage.blocks) for stage in model.stages)
    return sum(len(stage) for stage in model.blocks)


def test_every_built_in_family_is_registered():
    assert set(FAMILY_NAMES) <= set(FAMILIES.names())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_width_increases_parameters(family):
    narrow = build_student(family, 0.25, 0.5, num_classes=10, in_chans=1)
    wide = build_student(family, 0.5, 0.5, num_classes=10, in_chans=1)
    assert count_parameters(wide) > count_parameters(narrow)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_depth_increases_blocks(family):
    shallow = build_student(family, 0.25, 0.5, num_classes=10, in_chans=1)
    deep = build_student(family, 0.25, 1.0, num_classes=10, in_chans=1)
    assert blocks(deep) > blocks(shallow)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_student_classifies_small_grey_images(family):
    model = build_student(family, 0.125, 0.5, num_classes=7, in_chans=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_resnet_arguments_scale_resnet18():
    assert resnet_arguments(1.0, 1.0) == {"layers": (2, 2, 2, 2), "channels": (64, 128, 256, 512)}
    assert resnet_arguments(0.25, 0.5) == {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128)}


def test_convnext_arguments_scale_atto():
    assert convnext_arguments(0.5, 0.5) == {"depths": (1, 1, 3, 1), "dims": (24, 40, 80, 160)}


def test_resnet_width_reaches_the_model():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    assert model.layer1[0].conv1.out_channels == 16 and model.layer4[0].conv1.out_channels == 128


def test_mobilenetv3_width_reaches_the_model():
    half = build_student("mobilenetv3", 0.5, 1.0, num_classes=10, in_chans=1)
    full = build_student("mobilenetv3", 1.0, 1.0, num_classes=10, in_chans=1)
    assert half.blocks[-2][-1].conv_pwl.out_channels < full.blocks[-2][-1].conv_pwl.out_channels


def test_resnet_with_the_small_image_stem_classifies_small_grey_images():
    model = build_student("resnet", 0.125, 0.5, num_classes=7, in_chans=1, stem="small").eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("family", ["convnext", "vit"])
def test_a_family_without_a_small_image_stem_refuses_one(family):
    with pytest.raises(ValueError, match=f"stem: family '{family}' has no 'small' stem .*resnet"):
        build_student(family, 0.125, 0.5, num_classes=7, in_chans=1, stem="small")


def test_resnet_small_image_stem_is_one_3x3_stride_2_convolution_without_max_pool():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="small")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.in_channels) == ((3, 3), (2, 2), 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_resnet_small_image_stem_doubles_the_resolution_the_stages_see():
    images = torch.randn(2, 1, 32, 32)
    sides = []
    for stem in ("imagenet", "small"):
        model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem=stem).eval()
        _, (first_stage,) = model.forward_intermediates(images, indices=[1])
        sides.append(first_stage.shape[-1])
    assert sides == [8, 16]


def test_resnet_small_image_stem_updates_the_feature_reductions():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="small")
    assert [info["reduction"] for info in model.feature_info] == [2, 2, 4, 8, 16]


def test_resnet_full_resolution_stem_is_the_small_convolution_at_stride_1():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="full")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.in_channels) == ((3, 3), (1, 1), 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_resnet_full_resolution_stem_lets_the_first_stage_see_the_whole_image():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="full").eval()
    _, (first_stage,) = model.forward_intermediates(torch.randn(2, 1, 28, 28), indices=[1])
    assert first_stage.shape[-2:] == (28, 28)


def test_resnet_full_resolution_stem_updates_the_feature_reductions():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="full")
    assert [info["reduction"] for info in model.feature_info] == [1, 1, 2, 4, 8]


def test_a_stem_changes_no_parameter_count():
    counts = {
        count_parameters(build_student("resnet", 0.22, 0.5, num_classes=10, in_chans=1, stem=stem))
        for stem in ("small", "full")
    }
    assert len(counts) == 1


@pytest.mark.parametrize(
    ("family", "stem"), [("resnet", "full"), ("mobilenetv3", "small"), ("convnext", "imagenet")]
)
def test_a_family_without_the_full_stem_gets_the_nearest_it_has(family, stem):
    assert stem_for(family, 28, "full") == stem


def test_resnet_imagenet_stem_is_timms_own():
    model = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="imagenet")
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize(
    ("image_size", "stem"), [(32, "small"), (64, "small"), (96, "imagenet"), (224, "imagenet")]
)
def test_auto_stem_follows_the_image_size(image_size, stem):
    assert stem_for("resnet", image_size) == stem


def test_an_explicit_stem_choice_overrides_the_image_size():
    assert (stem_for("resnet", 32, "imagenet"), stem_for("resnet", 224, "small")) == ("imagenet", "small")


def test_a_family_without_a_small_image_stem_keeps_its_own():
    assert stem_for("convnext", 32) == stem_for("convnext", 32, "small") == "imagenet"


def test_an_unknown_stem_is_refused_by_name():
    with pytest.raises(ValueError, match="stem: 'tiny' is not one of imagenet, small"):
        build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1, stem="tiny")


def test_vit_width_sets_heads_of_32_and_depth_sets_blocks():
    model = build_student("vit", 0.5, 0.5, num_classes=10, in_chans=1)
    assert model.embed_dim == 192 and model.blocks[0].attn.num_heads == 6 and len(model.blocks) == 6


def test_vit_takes_images_of_other_sizes():
    model = build_student("vit", 0.125, 0.5, num_classes=3, in_chans=3).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("family", ["mobilenetv3_minimal", "ghostnet", "efficientnet_lite", "mobilenetv4"])
def test_int8_friendly_families_have_no_squeeze_excite_or_hard_swish(family):
    model = build_student(family, 0.25, 0.5, num_classes=10, in_chans=1)
    names = {type(m).__name__ for m in model.modules()}
    assert not names & {"SqueezeExcite", "Hardswish", "HardSwish", "Hardsigmoid", "HardSigmoid"}


def test_mobilenetv4_at_full_width_and_depth_is_timms_conv_small():
    model = build_student("mobilenetv4", 1.0, 1.0, num_classes=10, in_chans=3)
    reference = timm.create_model("mobilenetv4_conv_small", num_classes=10)
    assert count_parameters(model) == count_parameters(reference)


def test_a_timm_name_is_that_model_as_is():
    model = build_student("timm:mobilenetv3_small_050", 0.25, 0.5, num_classes=10, in_chans=1)
    reference = timm.create_model("mobilenetv3_small_050", num_classes=10, in_chans=1)
    assert count_parameters(model) == count_parameters(reference)
    assert get_family("timm:mobilenetv3_small_050").fixed


def test_an_unknown_timm_name_says_which_models_are_close():
    with pytest.raises(
        ValueError, match="'mobilenetv3_smal_050' is not a timm model; close matches: mobilenetv3_small_050"
    ):
        get_family("timm:mobilenetv3_smal_050")


@pytest.mark.parametrize(
    "family", ["mobilenetv3", "mobilenetv3_minimal", "efficientnet_lite", "ghostnet", "mobilenetv4"]
)
def test_the_mobile_families_small_stem_doubles_the_resolution_their_stages_see(family):
    own = build_student(family, 0.25, 0.5, num_classes=10, in_chans=1, stem="imagenet").eval()
    small = build_student(family, 0.25, 0.5, num_classes=10, in_chans=1, stem="small").eval()
    x = torch.randn(1, 1, 32, 32)
    assert small.forward_features(x).shape[-1] == 2 * own.forward_features(x).shape[-1]
    assert [i["reduction"] for i in small.feature_info] == [
        max(1, i["reduction"] // 2) for i in own.feature_info
    ]


@pytest.mark.slow
def test_a_search_trains_and_quantizes_a_fixed_timm_student(tiny_study, shared_runs):
    import autokd

    tiny_study["name"] = "fixed-timm"
    tiny_study["search_space"]["families"] = ["timm:mobilenetv3_small_050"]
    tiny_study["budget"]["trials"] = 1
    result = autokd.search(
        tiny_study, runs_dir=shared_runs, reports_dir=None, log=lambda _: None, progress=False
    )
    (trial,) = [t for t in result.records.trials if t.completed]
    assert trial.config["family"] == "timm:mobilenetv3_small_050" and trial.config["width"] == 1.0
    assert trial.result.compression > 1 and 0 <= trial.result.int8_fp32_agreement <= 1
