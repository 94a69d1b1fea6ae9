"""One trial as a plain function of its config: build → train → FP32 eval → INT8 → INT8 eval → latency.

No orchestrator is imported here: Optuna, Ray Tune and the tests all call :func:`run_trial`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from autokd.data import DataSplits
from autokd.distill import PLUGINS, ModelInfo
from autokd.features import feature_stage_indices
from autokd.measure import Latency, measure_latency
from autokd.quantize import BACKENDS, deployed_weight_bytes, quantize
from autokd.students import build_student, count_parameters
from autokd.teacher_cache import TeacherOutputs
from autokd.train import TrainSettings, WeightedPlugin, evaluate, train


@dataclass(frozen=True)
class TrialConfig:
    """Every setting one trial needs; sampled by an orchestrator or written by hand."""

    family: str
    width: float
    depth: float
    methods: tuple[str, ...] = ("hinton_kd",)
    temperature: float = 4.0
    loss_weight: float = 1.0
    plugin_params: dict[str, dict[str, float]] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    quantization_backend: str = "fx_x86"
    calibration_batches: int = 8
    latency_batch_size: int = 1
    latency_threads: int = 1
    latency_min_run_time_s: float = 0.3


@dataclass(frozen=True)
class TeacherReference:
    """What a trial needs of the teacher: its outputs (cached or live) and its FP32 figures."""

    outputs: TeacherOutputs
    test_accuracy: float
    parameters: int
    weight_bytes: int

    @property
    def model(self) -> nn.Module:
        return self.outputs.model


def _model_info(model: nn.Module, stages: list[int], num_classes: int) -> ModelInfo:
    channels = (
        tuple(model.feature_info[i]["num_chs"] for i in feature_stage_indices(model, stages))
        if stages
        else ()
    )
    return ModelInfo(feature_channels=channels, num_classes=num_classes)


def build_plugins(
    config: TrialConfig, student: nn.Module, teacher: nn.Module, num_classes: int
) -> list[WeightedPlugin]:
    """Instantiate the trial's plugins with their sampled hyperparameters and adapters sized for both models."""
    entries = []
    for name in config.methods:
        cls = PLUGINS.get(name)
        stages = list(cls.needs_features)
        plugin = cls(
            _model_info(student, stages, num_classes),
            _model_info(teacher, stages, num_classes),
            **config.plugin_params.get(name, {}),
        )
        entries.append(WeightedPlugin(plugin=plugin, weight=config.loss_weight))
    return entries


def quantize_student(student: nn.Module, config: TrialConfig, data: DataSplits) -> tuple[nn.Module, float]:
    """INT8 model of ``student`` calibrated on the first training batches, and the seconds it took."""
    start = time.perf_counter()
    calibration = [
        data.train_x[i * config.batch_size : (i + 1) * config.batch_size]
        for i in range(config.calibration_batches)
    ]
    int8_model = quantize(
        student, [batch for batch in calibration if len(batch)], config.quantization_backend
    )
    return int8_model, time.perf_counter() - start


def measure_deployed_latency(
    int8_model: nn.Module, config: TrialConfig, data: DataSplits, latency_lock: Path | None
) -> Latency:
    """Latency of the deployed model at the study's batch size and threads, on its backend's runtime."""
    example = data.test_x[: config.latency_batch_size]
    if len(example) < config.latency_batch_size:  # tiny test splits: repeat rows up to the asked batch
        repeats = config.latency_batch_size // len(example) + 1
        example = example.repeat(repeats, 1, 1, 1)[: config.latency_batch_size]
    return measure_latency(
        int8_model,
        example,
        threads=config.latency_threads,
        min_run_time_s=config.latency_min_run_time_s,
        runtime=BACKENDS.get(config.quantization_backend).runtime,
        lock_path=latency_lock,
    )


def measure_untrained(
    config: TrialConfig, data: DataSplits, teacher: TeacherReference, latency_lock: Path | None = None
) -> dict:
    """Compression and INT8 latency of the student ``config`` describes, before any training.

    Both depend only on the architecture, so a pre-screen can compare a sampled student with those
    already measured without paying for its training.
    """
    torch.manual_seed(config.seed)
    student = build_student(
        config.family, config.width, config.depth, num_classes=data.num_classes, in_chans=data.in_chans
    ).eval()
    int8_model, _ = quantize_student(student, config, data)
    latency = measure_deployed_latency(int8_model, config, data, latency_lock)
    return {
        "compression": teacher.weight_bytes / deployed_weight_bytes(int8_model),
        "latency_ms": latency.median_ms,
        "parameters": count_parameters(student),
    }


def run_trial(
    config: TrialConfig,
    data: DataSplits,
    teacher: TeacherReference,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
    latency_lock: Path | None = None,
) -> dict:
    """Train, quantize and measure one student; return every metric (see the objective definitions).

    ``on_epoch(epoch, val_accuracy)`` is called after every epoch; raising from it stops the trial.
    """
    wall_start = time.perf_counter()
    torch.manual_seed(config.seed)
    student = build_student(
        config.family, config.width, config.depth, num_classes=data.num_classes, in_chans=data.in_chans
    )
    plugins = build_plugins(config, student, teacher.model, data.num_classes)
    val_history: list[float] = []

    def after_epoch(epoch: int, model: nn.Module) -> None:
        val_history.append(evaluate(model, data.val_x, data.val_y))
        if on_epoch is not None:
            on_epoch(epoch, val_history[-1])

    train(
        student,
        data.train_x,
        data.train_y,
        TrainSettings(config.epochs, config.batch_size, config.lr, config.weight_decay, config.seed),
        plugins=plugins,
        temperature=config.temperature,
        teacher=teacher.outputs if plugins else None,
        augmentation=teacher.outputs.augmentation,
        on_epoch=after_epoch,
    )
    train_seconds = time.perf_counter() - wall_start

    int8_model, quant_seconds = quantize_student(student, config, data)

    eval_start = time.perf_counter()
    fp32_accuracy = evaluate(student, data.test_x, data.test_y)
    int8_accuracy = evaluate(int8_model, data.test_x, data.test_y)
    with torch.no_grad():
        probe = data.test_x[:1000]
        agreement = float((student(probe).argmax(1) == int8_model(probe).argmax(1)).float().mean())
    eval_seconds = time.perf_counter() - eval_start

    measure_start = time.perf_counter()
    latency = measure_deployed_latency(int8_model, config, data, latency_lock)
    measure_seconds = time.perf_counter() - measure_start

    parameters = count_parameters(student)
    weight_bytes = deployed_weight_bytes(int8_model)
    return {
        "retention": int8_accuracy / teacher.test_accuracy,
        "compression": teacher.weight_bytes / weight_bytes,
        "latency_ms": latency.median_ms,
        "latency_iqr_ms": latency.iqr_ms,
        "retention_fp32": fp32_accuracy / teacher.test_accuracy,
        "quantization_loss": (fp32_accuracy - int8_accuracy) / teacher.test_accuracy,
        "int8_accuracy": int8_accuracy,
        "fp32_accuracy": fp32_accuracy,
        "int8_fp32_agreement": agreement,
        "parameters": parameters,
        "parameter_ratio": teacher.parameters / parameters,
        "weight_bytes": weight_bytes,
        "val_accuracy_per_epoch": val_history,
        "latency": latency.as_dict(),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "quantize_seconds": quant_seconds,
        "latency_seconds": measure_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "config": asdict(config),
    }
