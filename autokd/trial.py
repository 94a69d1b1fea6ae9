"""One trial as a plain function of its config: build → train → FP32 eval → INT8 → INT8 eval → latency.

No orchestrator is imported here: the Optuna and Ray drivers and the tests all call :func:`run_trial`,
which returns a typed :class:`TrialResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from autokd.data import DataSplits
from autokd.features import feature_stage_indices
from autokd.measure import Latency, SharedCores, latency_example, measure_latency
from autokd.methods import METHODS, ModelInfo
from autokd.pareto import OBJECTIVES
from autokd.quantize import (
    AGREEMENT_THRESHOLD,
    BACKENDS,
    DEFAULT_BACKEND,
    DeployedModel,
    calibration_batches,
    predict,
)
from autokd.quantize.qat import copy_weights_back, prepare_qat
from autokd.storage import write_atomically
from autokd.students import build_student, count_parameters
from autokd.teacher_cache import TeacherOutputs
from autokd.train import TrainSettings, WeightedMethod, evaluate, predict_logits, train

# QAT fine-tunes a trained student: a tenth of the training learning rate keeps it near its optimum.
QAT_LR_FACTOR = 0.1
STUDENT_WEIGHTS = "student.pt"


@dataclass(frozen=True)
class TrialConfig:
    """Every setting one trial needs; sampled by a driver or written by hand.

    The loss is ``(1 - distillation_share) × task loss + distillation_share × Σ weight × method loss``,
    with ``method_weights`` summing to 1 (one method: weight 1). ``method_params`` holds each method's
    own hyperparameters (its temperature, for the methods that soften logits).
    """

    family: str
    width: float
    depth: float
    # "imagenet" for configs stored before students had a stem choice: they rebuild as they trained
    stem: str = "imagenet"
    methods: tuple[str, ...] = ("hinton_kd",)
    distillation_share: float = 0.7
    method_weights: dict[str, float] = field(default_factory=dict)
    method_params: dict[str, dict[str, float]] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    quantization_backend: str = DEFAULT_BACKEND
    calibration_batches: int = 8
    qat: bool = False  # quantization-aware training during the last ``qat_epochs`` of ``epochs``
    qat_epochs: int = 1
    latency_batch_size: int = 1
    latency_threads: int = 1
    latency_min_run_time_s: float = 0.3

    def weight_of(self, method: str) -> float:
        """The method's share of the distillation term (weights sum to 1 over the trial's methods)."""
        if method in self.method_weights:
            return self.method_weights[method]
        return 1.0 / len(self.methods)

    @classmethod
    def from_dict(cls, values: dict) -> TrialConfig:
        """Rebuild a config from ``dataclasses.asdict`` output that travelled as plain data (JSON, Ray).

        Configs stored by autokd 0.1 (a shared ``temperature`` and ``loss_weight``, ``plugin_params``)
        rebuild too: their students have the same architecture, which is what export needs.
        """
        values = dict(values)
        if "plugin_params" in values:
            params = {name: dict(p) for name, p in values.pop("plugin_params").items()}
            temperature = values.pop("temperature", None)
            for name in values.get("methods", ()):
                if temperature is not None and "temperature" in METHODS.get(name).hyperparameters:
                    params.setdefault(name, {})["temperature"] = temperature
            values["method_params"] = params
            weight = values.pop("loss_weight", None)
            if weight is not None and values.get("methods"):
                values["distillation_share"] = weight / (1.0 + weight)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        return cls(**{**values, "methods": tuple(values.get("methods", ()))})


@dataclass(frozen=True)
class TrialResult:
    """Every metric of a finished trial (the objective definitions are in the report)."""

    retention: float
    compression: float
    latency_ms: float
    latency_iqr_ms: float
    retention_fp32: float
    quantization_loss: float
    int8_accuracy: float
    fp32_accuracy: float
    int8_fp32_agreement: float
    agreement_ok: bool
    backend: str
    runtime: str
    qat: bool
    latency_fp32_ms: float
    latency_fp32_iqr_ms: float
    int8_speedup_vs_fp32: float
    int8_slower_than_fp32: bool
    parameters: int
    parameter_ratio: float
    weight_bytes: int
    artifact_bytes: int | None
    val_accuracy_per_epoch: list[float]
    latency: dict
    latency_fp32: dict
    train_seconds: float
    eval_seconds: float
    quantize_seconds: float
    latency_seconds: float
    wall_seconds: float
    config: dict

    def objectives(self) -> list[float]:
        """(retention, compression, latency_ms): the values the drivers tell the sampler."""
        return [getattr(self, name) for name in OBJECTIVES]

    def as_attrs(self) -> dict:
        """Plain JSON-able data, as stored in the study."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict) -> TrialResult | None:
        """The result stored in a trial's attributes, or None when they hold none."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not all(name in attrs for name in OBJECTIVES):
            return None
        return cls(**{name: attrs.get(name) for name in names})


def new_student(config: TrialConfig, data: DataSplits) -> nn.Module:
    """The randomly initialised student ``config`` describes, shaped for ``data``'s images and classes."""
    return build_student(
        config.family,
        config.width,
        config.depth,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        stem=config.stem,
    )


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


def build_methods(
    config: TrialConfig, student: nn.Module, teacher: nn.Module, num_classes: int
) -> list[WeightedMethod]:
    """Instantiate the trial's methods with their sampled hyperparameters and adapters sized for both models."""
    entries = []
    for name in config.methods:
        cls = METHODS.get(name)
        stages = list(cls.needs_features)
        method = cls(
            _model_info(student, stages, num_classes),
            _model_info(teacher, stages, num_classes),
            **config.method_params.get(name, {}),
        )
        entries.append(WeightedMethod(method=method, weight=config.weight_of(name)))
    return entries


def quantize_student(
    student: nn.Module, config: TrialConfig, data: DataSplits
) -> tuple[DeployedModel, DeployedModel, float]:
    """INT8 and FP32 models of ``student`` on its backend's runtime, calibrated on the first training
    batches, and the seconds it took."""
    start = time.perf_counter()
    calibration = calibration_batches(data.train_x, config.batch_size, config.calibration_batches)
    int8_model, fp32_model = BACKENDS.get(config.quantization_backend).quantize_with_fp32(
        student, calibration
    )
    return int8_model, fp32_model, time.perf_counter() - start


def measure_deployed_latency(
    model: DeployedModel, config: TrialConfig, data: DataSplits, latency_lock: Path | None
) -> Latency:
    """Latency of a deployed model at the study's batch size and threads, on its backend's runtime."""
    return measure_latency(
        model,
        latency_example(data.test_x, config.latency_batch_size),
        threads=config.latency_threads,
        min_run_time_s=config.latency_min_run_time_s,
        lock_path=latency_lock,
    )


def architecture_key(student: nn.Module, config: TrialConfig) -> str:
    """What a student's deployed size and latency depend on: its family, stem, module tree and
    parameter shapes, and how it is deployed (INT8 backend, latency batch and threads). Two sampled
    configs with the same key (widths and depths round to the same channels and blocks; methods,
    temperatures and weights do not change the network) deploy the same network."""
    digest = hashlib.sha256()
    digest.update(
        f"{config.family}|{config.stem}|{config.quantization_backend}|"
        f"{config.latency_batch_size}|{config.latency_threads}|".encode()
    )
    for name, module in student.named_modules():
        digest.update(f"{name}:{type(module).__name__};".encode())
    for name, tensor in student.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()[:16]


def measure_student(
    student: nn.Module,
    config: TrialConfig,
    data: DataSplits,
    teacher: TeacherReference,
    latency_lock: Path | None = None,
) -> dict:
    """Compression and INT8 latency of ``student``, the untrained network ``config`` describes.

    Both depend only on the architecture, so a pre-screen can compare a sampled student with those
    already measured without paying for its training.
    """
    # One calibration batch: the INT8 graph (so its size and speed) does not depend on the ranges.
    calibration = calibration_batches(data.train_x, config.batch_size, 1)
    int8_model = BACKENDS.get(config.quantization_backend).quantize(student, calibration)
    latency = measure_deployed_latency(int8_model, config, data, latency_lock)
    return {
        "compression": teacher.weight_bytes / int8_model.weight_bytes(),
        "size_kb": int8_model.weight_bytes() / 1000,
        "latency_ms": latency.median_ms,
        "parameters": count_parameters(student),
    }


def train_student(
    config: TrialConfig,
    data: DataSplits,
    teacher: TeacherReference,
    after_epoch: Callable[[int, nn.Module], None],
    device: str = "cpu",
    amp: bool = False,
    cpu_bf16: bool = False,
) -> nn.Module:
    """Train the config's student in FP32 (on ``device``; mixed precision with ``amp`` on CUDA, bfloat16
    with ``cpu_bf16`` on the CPU), then (with ``qat``) its last ``qat_epochs`` fake-quantized, in FP32
    on the CPU; the student is returned on the CPU."""
    qat_epochs = config.qat_epochs if config.qat else 0
    if qat_epochs >= config.epochs:
        raise ValueError(f"qat_epochs ({qat_epochs}) must leave at least one FP32 epoch of {config.epochs}")
    student = new_student(config, data)
    methods = build_methods(config, student, teacher.model, data.num_classes)
    common = {
        "methods": methods,
        "distillation_share": config.distillation_share,
        "teacher": teacher.outputs if methods else None,
        "augmentation": teacher.outputs.augmentation,
    }
    fp32_epochs = config.epochs - qat_epochs
    settings = TrainSettings(
        fp32_epochs,
        config.batch_size,
        config.lr,
        config.weight_decay,
        config.seed,
        device=device,
        amp=amp,
        cpu_bf16=cpu_bf16,
    )
    train(student, data.train_x, data.train_y, settings, on_epoch=after_epoch, **common)
    student.cpu()
    if qat_epochs:
        # the stages the training loop asks for: every method's, in ascending order
        indices = sorted(
            {i for e in methods for i in feature_stage_indices(student, e.method.needs_features)}
        )
        qat_student = prepare_qat(student, data.train_x[: config.batch_size], indices)
        # fake quantization simulates INT8 from FP32 values: no bfloat16 autocast around it
        settings = dataclasses.replace(
            settings, epochs=qat_epochs, lr=config.lr * QAT_LR_FACTOR, cpu_bf16=False
        )
        train(
            qat_student,
            data.train_x,
            data.train_y,
            settings,
            on_epoch=lambda epoch, model: after_epoch(fp32_epochs + epoch, model),
            **common,
        )
        qat_student.cpu()
        copy_weights_back(qat_student, student)
    return student.cpu()


def run_trial(
    config: TrialConfig,
    data: DataSplits,
    teacher: TeacherReference,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
    latency_lock: Path | None = None,
    artifact_dir: Path | None = None,
    device: str = "cpu",
    amp: bool = False,
    cpu_bf16: bool = False,
) -> TrialResult:
    """Train, quantize and measure one student; return every metric (see the objective definitions).

    ``on_epoch(epoch, val_accuracy)`` is called after every epoch; raising from it stops the trial.
    ``latency_lock`` is the file that keeps training off the cores while a latency is measured.
    ``artifact_dir``, when given, receives the FP32 student's state dict (``student.pt``, what
    ``autokd export`` rebuilds from) and the deployable INT8 artifact. ``device``/``amp``/``cpu_bf16``: where
    and in which precision the student trains (:mod:`autokd.devices`); quantization and latency are the CPU runtime's.
    """
    wall_start = time.perf_counter()
    torch.manual_seed(config.seed)
    backend = BACKENDS.get(config.quantization_backend)
    val_history: list[float] = []
    cores = SharedCores(latency_lock)

    def after_epoch(epoch: int, model: nn.Module) -> None:
        val_history.append(evaluate(model, data.val_x, data.val_y))
        if on_epoch is not None:
            on_epoch(epoch, val_history[-1])
        cores.step_aside()

    with cores:
        student = train_student(config, data, teacher, after_epoch, device, amp, cpu_bf16)
        train_seconds = time.perf_counter() - wall_start
        int8_model, fp32_model, quant_seconds = quantize_student(student, config, data)

        eval_start = time.perf_counter()
        fp32_predictions = predict_logits(student, data.test_x).argmax(1)
        int8_predictions = predict(int8_model, data.test_x).argmax(1)
        fp32_accuracy = float((fp32_predictions == data.test_y).float().mean())
        int8_accuracy = float((int8_predictions == data.test_y).float().mean())
        agreement = float((int8_predictions == fp32_predictions).float().mean())
        eval_seconds = time.perf_counter() - eval_start

        save_start = time.perf_counter()
        artifact_bytes = None
        with tempfile.TemporaryDirectory() as tmp:
            directory = artifact_dir if artifact_dir is not None else Path(tmp)
            directory.mkdir(parents=True, exist_ok=True)
            if artifact_dir is not None:
                write_atomically(student.state_dict(), directory / STUDENT_WEIGHTS)
            if backend.artifact_format:
                artifact_bytes = int8_model.save(directory / "int8").stat().st_size
        quant_seconds += time.perf_counter() - save_start

    measure_start = time.perf_counter()
    latency = measure_deployed_latency(int8_model, config, data, latency_lock)
    latency_fp32 = measure_deployed_latency(fp32_model, config, data, latency_lock)
    measure_seconds = time.perf_counter() - measure_start

    parameters = count_parameters(student)
    weight_bytes = int8_model.weight_bytes()
    return TrialResult(
        retention=int8_accuracy / teacher.test_accuracy,
        compression=teacher.weight_bytes / weight_bytes,
        latency_ms=latency.median_ms,
        latency_iqr_ms=latency.iqr_ms,
        retention_fp32=fp32_accuracy / teacher.test_accuracy,
        quantization_loss=(fp32_accuracy - int8_accuracy) / teacher.test_accuracy,
        int8_accuracy=int8_accuracy,
        fp32_accuracy=fp32_accuracy,
        int8_fp32_agreement=agreement,
        agreement_ok=agreement >= AGREEMENT_THRESHOLD,
        backend=backend.name,
        runtime=latency.runtime,
        qat=config.qat,
        latency_fp32_ms=latency_fp32.median_ms,
        latency_fp32_iqr_ms=latency_fp32.iqr_ms,
        int8_speedup_vs_fp32=latency_fp32.median_ms / latency.median_ms,
        int8_slower_than_fp32=latency.median_ms > latency_fp32.median_ms,
        parameters=parameters,
        parameter_ratio=teacher.parameters / parameters,
        weight_bytes=weight_bytes,
        artifact_bytes=artifact_bytes,
        val_accuracy_per_epoch=val_history,
        latency=latency.as_dict(),
        latency_fp32=latency_fp32.as_dict(),
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        quantize_seconds=quant_seconds,
        latency_seconds=measure_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        config=asdict(config),
    )
