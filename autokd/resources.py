"""What every driver needs before its first trial, each built once: extensions, data, teacher, its outputs.

Nothing here changes process-wide state for good: :func:`torch_threads` and :func:`quiet_optuna`
are context managers that the drivers hold while trials run and that restore what they found.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from autokd.config import Study
from autokd.data import DataSplits, load_data
from autokd.devices import amp_dtype, resolve_device
from autokd.features import feature_stage_indices
from autokd.methods import METHODS
from autokd.registry import load_extension_files
from autokd.space import check_study, methods_of
from autokd.teacher import (
    Teacher,
    augmentation_of,
    check_checkpoint,
    prepare_teacher,
    teacher_directory,
    teacher_lock,
)
from autokd.teacher_cache import TeacherOutputs, build_teacher_outputs
from autokd.trial import TeacherReference


@dataclass
class Resources:
    """Data, teacher and its outputs for one study, plus where its run folder is."""

    study: Study
    run_dir: Path
    extension_paths: list[Path]
    data: DataSplits
    teacher: Teacher
    outputs: TeacherOutputs
    device: str = "cpu"  # where this process trains (autokd.devices)

    def teacher_reference(self) -> TeacherReference:
        """The teacher as trials see it: its outputs (cached or live) and its FP32 figures."""
        t = self.teacher
        return TeacherReference(self.outputs, t.test_accuracy, t.parameters, t.weight_bytes)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return values[3] + values[4], sum(values)  # idle + iowait, all


def busy_cores(sample_s: float = 0.5) -> float:
    """How many cores other processes keep busy now (this process sleeps while it looks)."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(sample_s)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):  # no /proc: the load average, which lags a minute
        return os.getloadavg()[0]
    busy_share = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return max(0.0, busy_share * (os.cpu_count() or 1))


def free_cores(busy: float | None = None) -> int:
    """The cores this process may use (its affinity) that other processes leave free; at least 1.

    Torch's intra-op threads wait for each other at every operator: with more threads than free
    cores, each waits on threads the scheduler has parked behind other processes, and training slows
    far beyond its share of the machine (see benchmarks/busy_machine.py).
    """
    cores = len(os.sched_getaffinity(0))
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


def training_threads(study: Study, log: Callable[[str], None], *, processes: int = 1) -> int:
    """Torch threads per training process: ``training.threads``, else the free cores split among them."""
    if study.training.threads:
        return study.training.threads
    cores = len(os.sched_getaffinity(0))
    busy = busy_cores()
    free = free_cores(busy)
    if free < cores:
        log(
            f"other processes keep {busy:.1f} of this machine's {cores} cores busy: training on {free} "
            "(set training.threads to choose)"
        )
    return max(1, free // processes)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines off for the block (failed trials get one line of autokd's instead)."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def load_extensions(study: Study, study_path: Path | None) -> list[Path]:
    """Import the study's extension files and check the study against the registries; return the paths."""
    paths = study.extension_paths(study_path)
    load_extension_files(paths)
    check_study(study)
    return paths


def load_study_data(study: Study) -> DataSplits:
    """The study's train/val/test tensors."""
    return load_data(study.data, seed=study.seed)


def teacher_stages_needed(study: Study, teacher_model: torch.nn.Module) -> list[int]:
    """Teacher feature stages that any method in the search space may ask for (to cache them once)."""
    stages: set[int] = set()
    for choice in study.search_space.methods:
        for name in methods_of(choice):
            method = METHODS.get(name)
            if method.needs_features and method.needs_teacher_features:
                stages.update(feature_stage_indices(teacher_model, method.needs_features))
    return sorted(stages)


def prepare_resources(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    worker: int = 0,
) -> Resources:
    """Load extensions and data, get the teacher (trained once, then read from disk) and its output cache.

    ``threads`` (default: the study's ``training.threads``, else torch's current count) is the number of
    torch threads used for the teacher's training and its outputs; the caller's count is restored.
    """
    paths = load_extensions(study, study_path)
    data = load_study_data(study)
    log(
        f"data {study.data.dataset}: {len(data.train_x)} train / {len(data.val_x)} val / {len(data.test_x)} test "
        f"images, {data.num_classes} classes, {data.in_chans}x{data.image_size}x{data.image_size}"
    )
    for note in data.notes:
        log(f"data: {note}")
    check_checkpoint(study, data)  # before the teacher's folder (named after the file's hash) exists
    device = resolve_device(study.training.device, worker)
    precision = amp_dtype(device, study.training.amp, study.training.cpu_bf16)
    if device.type != "cpu" or precision:
        log(
            f"device {device}"
            + (f", mixed precision {str(precision).removeprefix('torch.')}" if precision else "")
        )
    directory = teacher_directory(study, runs_root, log)
    with (
        torch_threads(threads or study.training.threads or torch.get_num_threads()),
        teacher_lock(directory, log),
    ):
        teacher = prepare_teacher(study, data, runs_root, log, device=str(device))
        outputs = build_teacher_outputs(
            teacher.model,
            data.train_x,
            teacher.directory,
            teacher.identity,
            enabled=study.teacher_cache,
            augmentation=augmentation_of(study),
            views=study.augmentation.views,
            stages=teacher_stages_needed(study, teacher.model),
            max_bytes=int(study.teacher_cache_max_gb * 1e9),
            seed=study.seed,
            log=log,
        )
    return Resources(study, runs_root / study.name, paths, data, teacher, outputs, device=str(device))
