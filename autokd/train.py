"""The distillation training loop: forward the student, look up the teacher, sum the weighted losses, step.

Data are in-memory tensors; a batch is an index slice (no DataLoader workers). Teacher logits come
precomputed for the training split (``teacher_logits[i]`` belongs to ``train_x[i]``); teacher features
are computed on the fly for the plugins that ask for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autokd.distill import DistillationPlugin, DistillInputs


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

    plugin: DistillationPlugin
    weight: float


def feature_stage_indices(model: nn.Module, wanted: Sequence[int]) -> list[int]:
    """Turn stage indices (negative counts from the last stage) into timm feature indices of ``model``."""
    n = len(model.feature_info)
    return sorted({i % n for i in wanted})


def forward_with_features(model: nn.Module, x: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, list]:
    """Logits plus the requested stage outputs through timm's ``forward_intermediates`` API."""
    if not indices:
        return model(x), []
    final, intermediates = model.forward_intermediates(x, indices=indices)
    return model.forward_head(final), list(intermediates)


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
    """Logits of ``model`` for every row of ``x``."""
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
    teacher_logits: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> None:
    """Train ``model`` with cross-entropy plus ``Σ weight × plugin loss`` for ``settings.epochs`` epochs.

    ``on_epoch(epoch, model)`` runs after every epoch (1-based); it may raise to stop training early.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    student_indices = feature_stage_indices(model, [i for p in plugins for i in p.plugin.needs_features])
    teacher_indices = (
        feature_stage_indices(teacher, [i for p in plugins for i in p.plugin.needs_features])
        if teacher is not None and student_indices
        else []
    )
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
            x, y = train_x[idx], train_y[idx]
            logits, student_features = forward_with_features(model, x, student_indices)
            loss = F.cross_entropy(logits, y)
            if plugins:
                teacher_features: list = []
                if teacher_indices:
                    with torch.no_grad():
                        teacher.eval()
                        _, teacher_features = forward_with_features(teacher, x, teacher_indices)
                inputs = DistillInputs(
                    student_logits=logits,
                    targets=y,
                    temperature=temperature,
                    teacher_logits=teacher_logits[idx] if teacher_logits is not None else None,
                    student_features=student_features,
                    teacher_features=teacher_features,
                )
                for entry in plugins:
                    loss = loss + entry.weight * _plugin_loss(entry, inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
