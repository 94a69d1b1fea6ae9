"""The teacher: trained once per content hash (or loaded from a checkpoint) and its outputs cached.

Everything lives under ``<runs>/_teachers/<key>/``, where ``key`` hashes the teacher section and the
data it sees, so any later study with the same teacher and data reuses it:

- ``teacher.pt``: the state dict (loaded with ``torch.load(weights_only=True)``),
- ``metrics.json``: accuracy on val and test, parameter count, FP32 weight bytes, training time,
- ``outputs-<cache key>/``: the teacher-output cache (see :mod:`autokd.teacher_cache`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from tqdm import tqdm

from autokd.augment import CropFlip
from autokd.config import Study
from autokd.data import DataSplits
from autokd.quantize import fp32_weight_bytes
from autokd.students import count_parameters
from autokd.train import TrainSettings, evaluate, train

TEACHERS_DIR = "_teachers"


@dataclass
class Teacher:
    """A ready teacher: the FP32 model and its metrics."""

    key: str
    directory: Path
    model: nn.Module
    test_accuracy: float
    val_accuracy: float
    parameters: int
    weight_bytes: int
    model_name: str


def _save_atomically(obj: object, path: Path) -> None:
    # Several processes or machines may share the runs folder: a reader must never load half a file.
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    if isinstance(obj, str):
        partial.write_text(obj)
    else:
        torch.save(obj, partial)
    partial.replace(path)


def augmentation_of(study: Study) -> CropFlip | None:
    """The study's augmentation, or None when it is off."""
    a = study.augmentation
    return CropFlip(padding=a.padding, hflip=a.hflip) if a.enabled else None


def _build(study: Study, data: DataSplits) -> nn.Module:
    return timm.create_model(
        study.teacher.model,
        pretrained=study.teacher.pretrained,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
    )


def prepare_teacher(
    study: Study, data: DataSplits, runs_root: Path, log: Callable[[str], None] = print
) -> Teacher:
    """Return the study's teacher, training it (or loading its checkpoint) only when not cached yet."""
    key = study.teacher_key()
    directory = runs_root / TEACHERS_DIR / key
    weights, metrics_path = directory / "teacher.pt", directory / "metrics.json"
    model = _build(study, data)
    if weights.exists() and metrics_path.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        metrics = json.loads(metrics_path.read_text())
        log(
            f"teacher {study.teacher.model} {key}: reused from {directory} (test top-1 {metrics['test_accuracy']:.4f})"
        )
    else:
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if study.teacher.checkpoint:
            model.load_state_dict(torch.load(study.teacher.checkpoint, weights_only=True))
            log(f"teacher {study.teacher.model}: loaded {study.teacher.checkpoint}")
        else:
            t = study.teacher
            log(
                f"teacher {t.model}: training {t.epochs} epochs on {len(data.train_x)} images (once; cached as {key})"
            )

            bar = tqdm(total=t.epochs, desc=f"teacher {t.model}", unit="epoch", leave=False, disable=None)

            def report(epoch: int, m: nn.Module) -> None:
                accuracy = evaluate(m, data.val_x, data.val_y)
                bar.update(1)
                bar.set_postfix(val_top1=f"{accuracy:.4f}")
                log(f"  teacher epoch {epoch}/{t.epochs}: val top-1 {accuracy:.4f}")
                m.train()

            train(
                model,
                data.train_x,
                data.train_y,
                TrainSettings(
                    epochs=t.epochs,
                    batch_size=t.batch_size,
                    lr=t.lr,
                    weight_decay=t.weight_decay,
                    seed=study.seed,
                ),
                augmentation=augmentation_of(study),
                on_epoch=report,
            )
            bar.close()
        metrics = {
            "model": study.teacher.model,
            "key": key,
            "val_accuracy": evaluate(model, data.val_x, data.val_y),
            "test_accuracy": evaluate(model, data.test_x, data.test_y),
            "parameters": count_parameters(model),
            "weight_bytes": fp32_weight_bytes(model),
            "seconds": time.perf_counter() - start,
            "source": study.teacher.checkpoint or "trained",
            "teacher_section": study.teacher.model_dump(),
        }
        _save_atomically(model.state_dict(), weights)
        _save_atomically(json.dumps(metrics, indent=2), metrics_path)
        log(f"teacher ready: test top-1 {metrics['test_accuracy']:.4f} ({metrics['seconds']:.0f} s)")
    model.eval()
    return Teacher(
        key=key,
        directory=directory,
        model=model,
        test_accuracy=metrics["test_accuracy"],
        val_accuracy=metrics["val_accuracy"],
        parameters=metrics["parameters"],
        weight_bytes=metrics["weight_bytes"],
        model_name=study.teacher.model,
    )
