"""The training loop: the convex loss mix, its checks, method failures, and the stages each method sees."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autokd.methods import METHODS, DistillInputs, Method
from autokd.students import build_student
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import MethodFailure, TrainSettings, WeightedMethod, distillation_loss, train

METHODS.load()


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


def hinton(temperature: float) -> Method:
    return METHODS.get("hinton_kd")(temperature=temperature)


@pytest.fixture
def data():
    torch.manual_seed(0)
    return torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))


@pytest.fixture
def setup(data, tmp_path):
    x, y = data
    teacher = build_student("resnet", 0.5, 0.5, num_classes=10, in_chans=1).eval()
    outputs = build_teacher_outputs(teacher, x, tmp_path, "t", stages=[4, 2], log=lambda _: None)
    return x, y, outputs


# ---------------------------------------------------------------- the loss of one batch


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kd(z_s: np.ndarray, z_t: np.ndarray, t: float) -> float:
    """Hinton KD by hand: T² · batch mean of KL(softmax(z_t/T) ‖ softmax(z_s/T))."""
    log_p_t, log_p_s = np_log_softmax(z_t / t), np_log_softmax(z_s / t)
    return t * t * float((np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean())


Z_S = np.random.default_rng(1).standard_normal((6, 4)) * 2
Z_T = np.random.default_rng(2).standard_normal((6, 4)) * 2
Y = np.array([0, 1, 2, 3, 1, 0])
CE = float(-np_log_softmax(Z_S)[np.arange(6), Y].mean())


def batch_inputs() -> DistillInputs:
    return DistillInputs(
        student_logits=torch.tensor(Z_S), targets=torch.tensor(Y), teacher_logits=torch.tensor(Z_T)
    )


@pytest.mark.parametrize("share", [0.0, 0.3, 0.9])
def test_the_loss_is_one_minus_share_times_ce_plus_share_times_the_method_loss(share):
    inputs = batch_inputs()
    loss = distillation_loss(
        inputs.student_logits, inputs.targets, [WeightedMethod(hinton(2.0), 1.0)], [inputs], share
    )
    assert loss.item() == pytest.approx((1 - share) * CE + share * np_kd(Z_S, Z_T, 2.0), rel=1e-12)


def test_the_distillation_term_is_the_weighted_sum_of_the_method_losses():
    inputs = batch_inputs()
    methods = [WeightedMethod(hinton(2.0), 0.25), WeightedMethod(hinton(5.0), 0.75)]
    loss = distillation_loss(inputs.student_logits, inputs.targets, methods, [inputs, inputs], 0.6)
    distill = 0.25 * np_kd(Z_S, Z_T, 2.0) + 0.75 * np_kd(Z_S, Z_T, 5.0)
    assert loss.item() == pytest.approx(0.4 * CE + 0.6 * distill, rel=1e-12)


def test_without_methods_the_loss_is_plain_cross_entropy_whatever_the_share():
    inputs = batch_inputs()
    for share in (0.0, 0.7, 0.99):
        loss = distillation_loss(inputs.student_logits, inputs.targets, [], [], share)
        assert loss.item() == pytest.approx(CE, rel=1e-12)


def test_training_without_methods_does_not_depend_on_the_share(data):
    x, y = data
    torch.manual_seed(0)
    first = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    second = copy.deepcopy(first)
    train(first, x, y, TrainSettings(epochs=1, batch_size=8), distillation_share=0.0)
    train(second, x, y, TrainSettings(epochs=1, batch_size=8), distillation_share=0.9)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


# ---------------------------------------------------------------- what train() refuses


@pytest.mark.parametrize("weights", [(0.5, 0.3), (0.7, 0.7), (1.1,), (float("nan"),)])
def test_method_weights_that_do_not_sum_to_one_are_refused(data, weights):
    x, y = data
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    methods = [WeightedMethod(hinton(4.0), w) for w in weights]
    with pytest.raises(
        ValueError, match=r"^method weights must sum to 1, got ([\d.]+|nan) \(hinton_kd="
    ) as error:
        train(student, x, y, TrainSettings(epochs=1, batch_size=8), methods=methods)
    assert "\n" not in str(error.value)


def test_negative_method_weights_are_refused(data):
    x, y = data
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    methods = [WeightedMethod(hinton(4.0), 1.5), WeightedMethod(hinton(2.0), -0.5)]
    with pytest.raises(ValueError, match="must not be negative"):
        train(student, x, y, TrainSettings(epochs=1, batch_size=8), methods=methods)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_a_distillation_share_outside_zero_to_one_is_refused(data, share):
    x, y = data
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match=r"^distillation_share must be in \[0, 1\), got "):
        train(student, x, y, TrainSettings(epochs=1, batch_size=8), distillation_share=share)


def test_weights_summing_to_one_within_a_millionth_are_accepted(setup):
    x, y, outputs = setup
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    methods = [WeightedMethod(hinton(4.0), 0.3), WeightedMethod(hinton(2.0), 0.7 + 5e-7)]
    train(student, x, y, TrainSettings(epochs=1, batch_size=8), methods=methods, teacher=outputs)


# ---------------------------------------------------------------- methods in the loop


def test_non_finite_method_loss_fails_naming_the_method(setup):
    x, y, outputs = setup
    student = build_student("convnext", 0.125, 0.5, num_classes=10, in_chans=1)
    with pytest.raises(MethodFailure, match="method 'nan_loss' returned a non-finite loss"):
        train(
            student,
            x,
            y,
            TrainSettings(epochs=1, batch_size=8),
            methods=[WeightedMethod(NaNLoss(), 1.0)],
            teacher=outputs,
        )


def test_method_receives_its_stages_in_its_order(setup):
    x, y, outputs = setup
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    train(
        student,
        x,
        y,
        TrainSettings(epochs=1, batch_size=8),
        methods=[WeightedMethod(Recorder(), 1.0)],
        teacher=outputs,
    )
    # teacher (width 0.5): stage 4 = 256 channels at 1×1, stage 2 = 64 at 4×4; student: 128 and 32
    assert Recorder.seen == [(256, 1, 1), (64, 4, 4), (128, 1, 1), (32, 4, 4)]


@pytest.mark.parametrize("images", [4, 10, 40])
def test_a_run_of_a_few_steps_trains(images):
    """One epoch of 2, 5 or 20 steps: a one-cycle schedule that short must not divide by zero."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(images, 1, 4, 4), torch.arange(images) % 3
    before = [p.detach().clone() for p in model.parameters()]
    train(model, x, y, TrainSettings(epochs=1, batch_size=2))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("erasing", [0.0, 0.5], ids=["crop-flip", "with-random-erasing"])
def test_training_interrupted_and_resumed_from_its_checkpoint_ends_as_if_never_interrupted(
    data, tmp_path, erasing
):
    from autokd.augment import CropFlip, WithErasing

    def augmentation():
        return WithErasing(CropFlip(), erasing) if erasing else CropFlip()

    x, y = data
    settings = TrainSettings(epochs=3, batch_size=4)

    def fresh():
        torch.manual_seed(0)
        return build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)

    straight = fresh()
    train(straight, x, y, settings, augmentation=augmentation())

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, _model):
        if epoch == 1:
            raise Interrupt

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupt):
        train(
            fresh(),
            x,
            y,
            settings,
            augmentation=augmentation(),
            on_epoch=stop_after_first,
            checkpoint=checkpoint,
        )
    resumed = fresh()
    epochs_run = []
    train(
        resumed,
        x,
        y,
        settings,
        augmentation=augmentation(),
        checkpoint=checkpoint,
        on_epoch=lambda e, _: epochs_run.append(e),
    )
    assert epochs_run == [2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
