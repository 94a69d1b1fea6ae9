"""The training loop: plugin failures name the plugin, and each plugin sees exactly its own stages."""

from __future__ import annotations

import pytest
import torch

from autokd.methods import Method, DistillInputs
from autokd.students import build_student
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import PluginFailure, TrainSettings, WeightedPlugin, train


class NaNLoss(Method):
    name = "nan_loss"
    kind = "response"

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        return inputs.student_logits.sum() * float("nan")


class Recorder(Method):
    name = "recorder"
    kind = "feature"
    needs_features = (-1, -3)
    seen: list[tuple[int, ...]] = []

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        Recorder.seen = [tuple(f.shape[1:]) for f in inputs.teacher_features] + [
            tuple(f.shape[1:]) for f in inputs.student_features
        ]
        return inputs.student_features[0].mean() * 0


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    teacher = build_student("resnet", 0.5, 0.5, num_classes=10, in_chans=1).eval()
    outputs = build_teacher_outputs(teacher, x, tmp_path, "t", stages=[4, 2], log=lambda _: None)
    return x, y, outputs


def test_non_finite_plugin_loss_fails_naming_the_plugin(setup):
    x, y, outputs = setup
    student = build_student("convnext", 0.125, 0.5, num_classes=10, in_chans=1)
    with pytest.raises(PluginFailure, match="plugin 'nan_loss' returned a non-finite loss"):
        train(
            student,
            x,
            y,
            TrainSettings(epochs=1, batch_size=8),
            plugins=[WeightedPlugin(NaNLoss(), 1.0)],
            teacher=outputs,
        )


def test_plugin_receives_its_stages_in_its_order(setup):
    x, y, outputs = setup
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    train(
        student,
        x,
        y,
        TrainSettings(epochs=1, batch_size=8),
        plugins=[WeightedPlugin(Recorder(), 1.0)],
        teacher=outputs,
    )
    # teacher (width 0.5): stage 4 = 256 channels at 1×1, stage 2 = 64 at 4×4; student: 128 and 32
    assert Recorder.seen == [(256, 1, 1), (64, 4, 4), (128, 1, 1), (32, 4, 4)]
