"""Quantization-aware training: it trains the student under fake quantization and hands its weights back."""

from __future__ import annotations

import pytest
import torch

from autokd.data import load_splits
from autokd.features import feature_stage_indices
from autokd.quantize import QuantizationError
from autokd.quantize.qat import copy_weights_back, prepare_qat
from autokd.students import build_student
from autokd.train import TrainSettings, evaluate, train


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", image_size=32)


def _student(family: str = "resnet"):
    torch.manual_seed(0)
    return build_student(family, 0.125, 0.5, num_classes=10, in_chans=1)


def test_qat_refuses_batchnorm_layers_with_zero_weights():
    # timm's ResNet starts every block's last BatchNorm at zero (zero_init_last): folding divides by it.
    with pytest.raises(QuantizationError, match="zero weights.*FP32 epoch"):
        prepare_qat(_student("resnet"), torch.randn(4, 1, 32, 32))


@pytest.mark.slow
def test_qat_trains_under_fake_quantization_and_copies_the_weights_back(digits):
    student = _student("resnet")
    train(student, digits.train_x, digits.train_y, TrainSettings(epochs=3, batch_size=64))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    qat_student = prepare_qat(student, digits.train_x[:64])
    assert torch.equal(student.state_dict()["fc.weight"], before["fc.weight"])  # prepare copies
    train(qat_student, digits.train_x, digits.train_y, TrainSettings(epochs=1, batch_size=64, lr=3e-4))
    assert evaluate(qat_student, digits.val_x, digits.val_y) > 0.8
    copy_weights_back(qat_student, student)
    after = student.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])  # statistics too
    assert evaluate(student, digits.val_x, digits.val_y) > 0.8


@pytest.mark.slow
def test_qat_student_serves_the_stage_outputs_feature_plugins_read(digits):
    student = _student("convnext")  # no BatchNorm: fine untrained
    indices = sorted(feature_stage_indices(student, [-1, -2]))  # the training loop asks in ascending order
    qat_student = prepare_qat(student, digits.train_x[:8], indices)
    logits, features = qat_student.forward_intermediates(digits.train_x[:8], indices=indices)
    expected = [student.feature_info[i]["num_chs"] for i in indices]
    assert logits.shape == (8, 10) and [f.shape[1] for f in features] == expected
    assert feature_stage_indices(qat_student, [-1, -2]) == feature_stage_indices(student, [-1, -2])
