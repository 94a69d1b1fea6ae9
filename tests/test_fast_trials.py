"""Teacher-output cache, replayable augmentation views and the median early-stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autokd.augment import CropFlip
from autokd.early_stopping import should_stop
from autokd.features import forward_with_features
from autokd.students import build_student
from autokd.teacher_cache import build_teacher_outputs


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(40, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_crop_at_the_padding_offset_without_flip_is_the_identity():
    x = torch.randn(3, 2, 8, 8)
    params = torch.tensor([[2, 2, 0]] * 3, dtype=torch.int16)
    assert torch.equal(CropFlip(padding=2).apply(x, params), x)


def test_crop_offset_shifts_content_and_fills_zeros():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    view = CropFlip(padding=1).apply(x, torch.tensor([[0, 2, 0]], dtype=torch.int16))[0, 0]
    # rows -1..2 and columns 1..4 of the original image
    expected = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]], dtype=torch.float)
    assert torch.equal(view, expected)


def test_flip_mirrors_columns():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    view = CropFlip(padding=0).apply(x, torch.tensor([[0, 0, 1]], dtype=torch.int16))
    assert torch.equal(view, x.flip(-1))


def test_cached_logits_equal_the_teacher_on_the_same_view(teacher, images, tmp_path):
    aug = CropFlip(padding=2)
    outputs = build_teacher_outputs(teacher, images, tmp_path, "t", augmentation=aug, views=3, log=quiet)
    idx, view = torch.tensor([0, 7, 39]), torch.tensor([2, 0, 1])
    x = outputs.view(images[idx], idx, view)
    logits, _ = outputs.lookup(x, idx, view, [])
    with torch.no_grad():
        assert torch.allclose(logits, teacher(x), atol=1e-4)


def test_cached_features_match_the_teacher_within_float16(teacher, images, tmp_path):
    outputs = build_teacher_outputs(teacher, images, tmp_path, "t", stages=[2, 4], log=quiet)
    idx, view = torch.arange(5), torch.zeros(5, dtype=torch.long)
    _, features = outputs.lookup(images[idx], idx, view, [2, 4])
    with torch.no_grad():
        _, expected = forward_with_features(teacher, images[idx], [2, 4])
    for stage, ref in zip([2, 4], expected, strict=True):
        assert torch.allclose(features[stage], ref, atol=1e-2, rtol=1e-2)


def test_cache_arrays_are_read_only_memory_maps(teacher, images, tmp_path):
    outputs = build_teacher_outputs(teacher, images, tmp_path, "t", log=quiet)
    assert isinstance(outputs.logits, np.memmap) and not outputs.logits.flags.writeable


def test_second_open_reuses_the_cache_without_running_the_teacher(teacher, images, tmp_path):
    build_teacher_outputs(teacher, images, tmp_path, "t", log=quiet)
    messages: list[str] = []
    build_teacher_outputs(teacher, images, tmp_path, "t", log=messages.append)
    assert not any("computing" in m for m in messages)


def test_cache_key_separates_preprocessing(teacher, images, tmp_path):
    plain = build_teacher_outputs(teacher, images, tmp_path, "t", log=quiet)
    augmented = build_teacher_outputs(
        teacher, images, tmp_path, "t", augmentation=CropFlip(), views=2, log=quiet
    )
    assert plain.directory != augmented.directory and augmented.logits.shape[0] == 2


def test_disabled_cache_runs_the_teacher_live(teacher, images, tmp_path):
    outputs = build_teacher_outputs(teacher, images, tmp_path, "t", enabled=False, log=quiet)
    idx = torch.arange(4)
    logits, _ = outputs.lookup(images[idx], idx, torch.zeros(4, dtype=torch.long), [])
    with torch.no_grad():
        assert outputs.logits is None and torch.allclose(logits, teacher(images[idx]))
    assert not list(tmp_path.iterdir())


def test_features_over_the_disk_cap_are_computed_live(teacher, images, tmp_path):
    messages: list[str] = []
    outputs = build_teacher_outputs(
        teacher, images, tmp_path, "t", stages=[1], max_bytes=200_000, log=messages.append
    )
    assert outputs.live_stages == (1,) and 1 not in outputs.features
    assert any("computed live" in m for m in messages)
    idx = torch.arange(3)
    _, features = outputs.lookup(images[idx], idx, torch.zeros(3, dtype=torch.long), [1])
    assert features[1].shape[0] == 3


HISTORIES = [[0.5, 0.70, 0.80], [0.5, 0.60, 0.85], [0.5, 0.80, 0.90]]


def test_rule_waits_for_the_warm_up():
    assert should_stop(1, 0.0, HISTORIES, warmup_epochs=1, min_completed_trials=1) is None


def test_rule_waits_for_enough_completed_trials():
    assert should_stop(2, 0.1, HISTORIES, warmup_epochs=1, min_completed_trials=4) is None


def test_rule_stops_below_the_median_at_the_same_epoch():
    assert should_stop(2, 0.65, HISTORIES, warmup_epochs=1, min_completed_trials=3) == pytest.approx(0.70)


def test_rule_keeps_a_trial_at_or_above_the_median():
    assert should_stop(2, 0.70, HISTORIES, warmup_epochs=1, min_completed_trials=3) is None
