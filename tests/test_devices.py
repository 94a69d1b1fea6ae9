"""training.device: what each setting resolves to, one line where the machine lacks it, and the same
plumbing exercised on the CPU (the CUDA path needs a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from autokd.config import StudyFileError, parse_study
from autokd.devices import DeviceError, amp_dtype, resolve_device
from autokd.space import check_study
from autokd.train import TrainSettings, evaluate, train


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_one_line(no_gpu):
    with pytest.raises(
        DeviceError, match=r"field 'training.device' = 'cuda': torch sees no CUDA GPU.*use cpu or auto"
    ):
        resolve_device("cuda")


def test_a_study_asking_for_cuda_without_one_is_refused_at_load(tiny_study, no_gpu):
    tiny_study["training"]["device"] = "cuda"
    with pytest.raises(StudyFileError, match="torch sees no CUDA GPU"):
        check_study(parse_study(tiny_study))


def test_mps_without_one_is_one_line(no_gpu):
    with pytest.raises(DeviceError, match="no usable Apple MPS device"):
        resolve_device("mps")


def test_an_unknown_device_is_refused_by_the_study_file():
    with pytest.raises(
        StudyFileError, match=r"field 'training.device' = 'gpu': use auto, cpu, cuda, cuda:N or mps"
    ):
        parse_study({"name": "a", "training": {"device": "gpu"}})


def test_workers_spread_over_the_gpus(two_gpus):
    assert [resolve_device("auto", worker=i).index for i in range(4)] == [0, 1, 0, 1]
    assert resolve_device("cuda", worker=3) == torch.device("cuda", 1)


def test_a_gpu_index_beyond_the_machines_is_one_line(two_gpus):
    with pytest.raises(DeviceError, match="this machine has 2 CUDA GPU"):
        resolve_device("cuda:2")


def test_mixed_precision_is_for_cuda_unless_the_study_asks_for_cpu_bf16():
    assert amp_dtype(torch.device("cpu")) is None
    assert amp_dtype(torch.device("cuda", 0), enabled=False) is None


def test_cpu_bf16_autocasts_cpu_training_to_bfloat16():
    assert amp_dtype(torch.device("cpu"), cpu_bf16=True) is torch.bfloat16


def test_cpu_bf16_must_be_a_boolean():
    with pytest.raises(StudyFileError, match="training.cpu_bf16"):
        parse_study({"name": "a", "training": {"cpu_bf16": "yes"}})


def test_cpu_bf16_training_runs_the_forward_pass_in_bfloat16_on_channels_last_batches(tiny_resources):
    data = tiny_resources.data
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(data.train_x[:2])  # materialise the lazy layer
    seen = []
    model[0].register_forward_hook(
        lambda module, inputs, output: (
            seen.append((output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))
            if module.training
            else None
        )
    )
    train(model, data.train_x, data.train_y, TrainSettings(epochs=1, batch_size=64, cpu_bf16=True))
    assert seen and all(entry == (torch.bfloat16, True) for entry in seen)


def test_cpu_bf16_training_learns_and_returns_the_model_in_fp32_default_layout(tiny_resources):
    data = tiny_resources.data
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )
    model(data.train_x[:2])
    settings = TrainSettings(epochs=3, batch_size=64, lr=0.01, cpu_bf16=True)
    train(model, data.train_x, data.train_y, settings)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert evaluate(model, data.val_x, data.val_y) > 0.5


def test_training_on_the_named_device_with_amp_requested_learns(tiny_resources):
    """The device plumbing (model, batches, methods moved; autocast and the scaler) on the CPU."""
    data = tiny_resources.data
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 10))
    settings = TrainSettings(epochs=3, batch_size=64, lr=0.01, device="cpu", amp=True)
    train(model, data.train_x, data.train_y, settings)
    assert evaluate(model, data.val_x, data.val_y) > 0.5
