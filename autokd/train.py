"""The distillation training loop: forward the student, look up the teacher, sum the weighted losses, step.

Data are in-memory tensors; a batch is an index slice (no DataLoader workers). Teacher outputs come
from the teacher-output cache (computed once per study) or, where it does not hold them, live.
Each plugin receives exactly the stages it asked for, in its own order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from autokd.augment import CropFlip
from autokd.methods import Method, DistillInputs
from autokd.features import feature_stage_indices, forward_with_features

if TYPE_CHECKING:
    from autokd.teacher_cache import TeacherOutputs


class PluginFailure(RuntimeError):
    """A distillation plugin raised or returned a non-finite loss; the message names the plugin."""


@dataclass(frozen=True)
class TrainSettings:
    """Named knobs of one training run."""

    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass
class WeightedPlugin:
    """A plugin instance and the weight of its loss next to the task loss."""

    plugin: Method
    weight: float


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` for every row of ``x`` (in eval mode)."""
    model.eval()
    return torch.cat([model(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


def _plugin_loss(entry: WeightedPlugin, inputs: DistillInputs) -> torch.Tensor:
    name = entry.plugin.name
    try:
        loss = entry.plugin(inputs)
    except Exception as exc:
        raise PluginFailure(f"plugin '{name}' raised {type(exc).__name__}: {exc}") from exc
    if not torch.isfinite(loss).all():
        raise PluginFailure(
            f"plugin '{name}' returned a non-finite loss ({loss.detach().flatten()[0].item()})"
        )
    return loss


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    settings: TrainSettings,
    *,
    plugins: Sequence[WeightedPlugin] = (),
    temperature: float = 1.0,
    teacher: TeacherOutputs | None = None,
    augmentation: CropFlip | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> None:
    """Train ``model`` with cross-entropy plus ``Σ weight × plugin loss`` for ``settings.epochs`` epochs.

    With a ``teacher``, each batch draws one of its cached views per sample (or the only view), so the
    student sees exactly the images whose teacher outputs are looked up. Without one, ``augmentation``
    (if given) draws fresh random views. ``on_epoch(epoch, model)`` runs after every epoch (1-based);
    it may raise to stop training early.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    student_stages = {id(e): feature_stage_indices(model, e.plugin.needs_features) for e in plugins}
    needs_teacher = teacher is not None and any(
        e.plugin.needs_teacher_logits or (e.plugin.needs_features and e.plugin.needs_teacher_features)
        for e in plugins
    )
    teacher_stages = {
        id(e): feature_stage_indices(teacher.model, e.plugin.needs_features)
        if teacher is not None and e.plugin.needs_teacher_features
        else []
        for e in plugins
    }
    all_student_stages = sorted({s for stages in student_stages.values() for s in stages})
    all_teacher_stages = sorted({s for stages in teacher_stages.values() for s in stages})
    extra = [p for entry in plugins for p in entry.plugin.parameters()]
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + extra, lr=settings.lr, weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.2
    )
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for entry in plugins:
            entry.plugin.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            if teacher is not None:
                view = torch.randint(0, teacher.num_views, (len(idx),), generator=generator)
                x = teacher.inputs(train_x, idx, view)
            elif augmentation is not None:
                x = augmentation.apply(train_x[idx], augmentation.sample(len(idx), generator))
            else:
                x = train_x[idx]
            y = train_y[idx]
            logits, student_features = forward_with_features(model, x, all_student_stages)
            loss = F.cross_entropy(logits, y)
            if plugins:
                student_by_stage = dict(zip(all_student_stages, student_features, strict=True))
                teacher_logits, teacher_by_stage = (
                    teacher.lookup(x, idx, view, all_teacher_stages) if needs_teacher else (None, {})
                )
                for entry in plugins:
                    inputs = DistillInputs(
                        student_logits=logits,
                        targets=y,
                        temperature=temperature,
                        teacher_logits=teacher_logits,
                        student_features=[student_by_stage[s] for s in student_stages[id(entry)]],
                        teacher_features=[teacher_by_stage[s] for s in teacher_stages[id(entry)]],
                    )
                    loss = loss + entry.weight * _plugin_loss(entry, inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
