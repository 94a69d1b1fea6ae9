"""The distillation training loop: forward the student, look up the teacher, mix the losses, step.

The loss of a batch is the convex form users know from the papers,
``(1 − distillation_share) · CE + distillation_share · Σ_i weight_i · loss_i``, over the given
distillation methods, whose weights sum to 1; with no methods it is plain cross-entropy. Temperatures
and other settings of a method are its own hyperparameters (``self.temperature``), not the trainer's.
Data are in-memory tensors (a batch is an index slice) or streamed images (a batch is read by
DataLoader workers, in the same order: :func:`autokd.data.batches`). Teacher outputs come
from the teacher-output cache (computed once per study) or, where it does not hold them, live.
Each method receives exactly the stages it asked for, in its own order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from autokd.augment import CropFlip, WithErasing
from autokd.data.stream import StreamedImages, batches, chunked
from autokd.devices import amp_dtype, autocast, device_of
from autokd.features import feature_stage_indices, forward_with_features
from autokd.methods import DistillInputs, Method

if TYPE_CHECKING:
    from autokd.teacher_cache import TeacherOutputs

_WEIGHT_TOLERANCE = 1e-6


class MethodFailure(RuntimeError):
    """A distillation method raised or returned a non-finite loss; the message names the method."""


@dataclass(frozen=True)
class TrainSettings:
    """Named knobs of one training run."""

    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"  # a torch device string (autokd.devices.resolve_device gives it)
    amp: bool = False  # mixed precision where the device has it (CUDA): bf16 where supported, else fp16
    cpu_bf16: bool = False  # on the CPU: bfloat16 autocast, model and batches channels-last


@dataclass
class WeightedMethod:
    """A method instance and its weight inside the distillation term (the weights of a run sum to 1)."""

    method: Method
    weight: float


def check_mix(methods: Sequence[WeightedMethod], distillation_share: float) -> None:
    """Raise ValueError unless ``0 ≤ distillation_share < 1`` and the weights are ≥ 0 and sum to 1."""
    if not 0.0 <= distillation_share < 1.0:
        raise ValueError(f"distillation_share must be in [0, 1), got {distillation_share}")
    if not methods:
        return
    weights = ", ".join(f"{e.method.name or type(e.method).__name__}={e.weight:g}" for e in methods)
    if any(e.weight < 0 for e in methods):
        raise ValueError(f"method weights must not be negative, got {weights}")
    total = sum(e.weight for e in methods)
    if not abs(total - 1.0) <= _WEIGHT_TOLERANCE:  # written so that a NaN weight fails too
        raise ValueError(f"method weights must sum to 1, got {total:g} ({weights})")


def distillation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[WeightedMethod],
    inputs: Sequence[DistillInputs],
    distillation_share: float,
) -> torch.Tensor:
    """``(1 − share) · CE(logits, targets) + share · Σ weight · method(inputs)``; plain CE without methods.

    ``inputs[i]`` is what ``methods[i]`` sees. The mix is not checked here; :func:`train` checks it once.
    """
    task = F.cross_entropy(logits, targets)
    if not methods:
        return task
    distill = sum(e.weight * _method_loss(e, x) for e, x in zip(methods, inputs, strict=True))
    return (1.0 - distillation_share) * task + distillation_share * distill


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor | StreamedImages, y: torch.Tensor, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    model.eval()
    device = device_of(model)
    correct = 0
    for idx, images in batches(x, batch_size):
        logits = model(images.to(device)).cpu()
        correct += int((logits.argmax(1) == y[idx]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor | StreamedImages, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` for every row of ``x`` (in eval mode)."""
    model.eval()
    device = device_of(model)
    return torch.cat([model(images.to(device)).cpu() for _, images in batches(x, batch_size)])


def _method_loss(entry: WeightedMethod, inputs: DistillInputs) -> torch.Tensor:
    name = entry.method.name or type(entry.method).__name__
    try:
        loss = entry.method(inputs)
    except Exception as exc:
        raise MethodFailure(f"method '{name}' raised {type(exc).__name__}: {exc}") from exc
    if not torch.isfinite(loss).all():
        raise MethodFailure(
            f"method '{name}' returned a non-finite loss ({loss.detach().flatten()[0].item()})"
        )
    return loss


def train(
    model: nn.Module,
    train_x: torch.Tensor | StreamedImages,
    train_y: torch.Tensor,
    settings: TrainSettings,
    *,
    methods: Sequence[WeightedMethod] = (),
    distillation_share: float = 0.7,
    teacher: TeacherOutputs | None = None,
    augmentation: CropFlip | WithErasing | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    checkpoint: Path | None = None,
) -> None:
    """Train ``model`` for ``settings.epochs`` epochs on the loss of :func:`distillation_loss`.

    That is ``(1 − distillation_share) · CE + distillation_share · Σ weight × method loss``; the
    weights of ``methods`` must sum to 1 and the share lie in [0, 1) (ValueError otherwise, before
    any training); with no methods the loss is plain CE. With a ``teacher``, each batch draws one of
    its cached views per sample (or the only view), so the student sees exactly the images whose
    teacher outputs are looked up. Without one, ``augmentation`` (if given) draws fresh random views.
    ``on_epoch(epoch, model)`` runs after every epoch (1-based); it may raise to stop training early.
    A method that raises or returns a non-finite loss stops training with :class:`MethodFailure`.
    With a ``checkpoint`` path, everything training depends on (weights, optimizer, schedule, gradient
    scaler, random generators) is written there after every epoch but the last, and a run that finds the file
    continues after its last epoch: interrupted and resumed, it ends with the same weights as a run
    that was never interrupted.
    """
    check_mix(methods, distillation_share)
    generator = torch.Generator().manual_seed(settings.seed)
    device = torch.device(settings.device)
    model.to(device)
    for entry in methods:
        entry.method.to(device)
    precision = amp_dtype(device, settings.amp, settings.cpu_bf16)
    # oneDNN's bfloat16 convolutions are fastest on channels-last tensors (measured 1.1-1.3x on top
    # of autocast); the model goes back to the default layout after training
    layout = torch.channels_last if device.type == "cpu" and precision is not None else None
    if layout is not None:
        model.to(memory_format=layout)
    # float16 needs its gradients scaled; bfloat16 (and FP32) do not
    scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
    student_stages = [feature_stage_indices(model, e.method.needs_features) for e in methods]
    needs_teacher = teacher is not None and any(
        e.method.needs_teacher_logits or (e.method.needs_features and e.method.needs_teacher_features)
        for e in methods
    )
    teacher_stages = [
        feature_stage_indices(teacher.model, e.method.needs_features)
        if teacher is not None and e.method.needs_teacher_features
        else []
        for e in methods
    ]
    all_student_stages = sorted({s for stages in student_stages for s in stages})
    all_teacher_stages = sorted({s for stages in teacher_stages for s in stages})
    extra = [p for entry in methods for p in entry.method.parameters()]
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + extra, lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if total_steps >= 3:
        # One-cycle: 20% warm-up, at least 2 steps of it (a shorter phase divides by zero in torch).
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=max(0.2, 2 / total_steps)
        )
    else:  # a run of one or two steps: the learning rate as given
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    first = 1
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)  # autokd's own file, written below
        model.load_state_dict(state["model"])
        for entry, method_state in zip(methods, state["methods"], strict=True):
            entry.method.load_state_dict(method_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first = state["epoch"] + 1
    try:
        for epoch in range(first, settings.epochs + 1):
            model.train()
            for entry in methods:
                entry.method.train()
            order = torch.randperm(len(train_x), generator=generator)
            # BatchNorm cannot train on a batch of one: such a last batch is left out
            chunks = [idx for idx in order.split(settings.batch_size) if len(idx) >= 2]
            for idx, x in chunked(train_x, chunks):
                if teacher is not None:
                    view = torch.randint(0, teacher.num_views, (len(idx),), generator=generator)
                    x = teacher.view(x, idx, view)
                elif augmentation is not None:
                    x = augmentation.apply(x, augmentation.sample(len(idx), generator))
                x, y = x.to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
                if layout is not None and x.dim() == 4:
                    x = x.contiguous(memory_format=layout)
                teacher_logits, teacher_by_stage = (
                    teacher.lookup(x, idx, view, all_teacher_stages) if needs_teacher else (None, {})
                )
                if teacher_logits is not None:
                    teacher_logits = teacher_logits.to(device, non_blocking=True)
                teacher_by_stage = {s: f.to(device, non_blocking=True) for s, f in teacher_by_stage.items()}
                with autocast(device, precision):
                    logits, student_features = forward_with_features(model, x, all_student_stages)
                student_by_stage = dict(zip(all_student_stages, student_features, strict=True))
                inputs = [
                    DistillInputs(
                        student_logits=logits,
                        targets=y,
                        teacher_logits=teacher_logits,
                        student_features=[student_by_stage[s] for s in s_stages],
                        teacher_features=[teacher_by_stage[s] for s in t_stages],
                    )
                    for s_stages, t_stages in zip(student_stages, teacher_stages, strict=True)
                ]
                with autocast(device, precision):
                    loss = distillation_loss(logits, y, methods, inputs, distillation_share)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            # after the last epoch the caller stores the model
            if checkpoint is not None and epoch < settings.epochs:
                from autokd.storage import write_atomically

                write_atomically(
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "methods": [entry.method.state_dict() for entry in methods],
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                    },
                    checkpoint,
                )
            if on_epoch is not None:
                on_epoch(epoch, model)
    finally:  # an early stop (raised by on_epoch) included
        if layout is not None:
            model.to(memory_format=torch.contiguous_format)
    model.eval()
