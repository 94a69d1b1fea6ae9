"""Latency of a deployed model on its runtime: median and IQR of one forward pass, measured alone.

The one place latency is measured, for students (INT8 and their FP32 version) and the teacher alike:
a :class:`~autokd.quantize.DeployedModel` hands over a zero-argument forward pass on its runtime
(ONNX Runtime session, compiled graph, eager module) with everything else done beforehand,
compilation included; it is warmed up, then timed by ``torch.utils.benchmark`` in at least
``min_repeats`` blocks over at least ``min_run_time_s``. The record names the runtime and its version, the CPU and torch.

Cores are shared through a file lock, one per user and machine (:func:`machine_latency_lock`): training takes
it shared (between epochs it steps aside for a waiting measurement), measurement takes it exclusively,
so no trial of any worker, Ray trial or other study on this machine trains on these cores while one is
timed. A turnstile lock gives waiting measurements priority over new training.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autokd.quantize import DeployedModel, quiet
from autokd.quantize.torch_fp32 import TorchFP32Model


@dataclass(frozen=True)
class Latency:
    """Median and interquartile range of one forward pass, with the conditions it was measured under."""

    median_ms: float
    iqr_ms: float
    batch_size: int
    threads: int
    runtime: str
    runtime_version: str
    precision: str
    repeats: int
    cpu: str
    torch_version: str
    exclusive: bool = True  # False: the cores could not be had alone in time (see LOCK_WAIT_S)

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


MEASUREMENT_POLICY = (
    "one measurement at a time per machine (file lock); concurrent trials on that machine pause "
    "training at their next epoch boundary while a measurement runs"
)


LOCK_DIR_VARIABLE = "AUTOKD_LOCK_DIR"  # the latency lock's folder, instead of TMPDIR/autokd-UID


class LatencyLockError(RuntimeError):
    """The latency lock's folder or file is not this user's own; the message says what to remove."""


def machine_latency_lock() -> Path:
    """The lock this user's autokd processes on this machine share, whatever the study (latency is about
    cores), in a folder only this user can reach: no other user can hold it, plant a symlink in it or
    make it unreadable. ``AUTOKD_LOCK_DIR`` names another such folder: processes that must not wait
    for each other (autokd's own test suite beside a search) use different ones."""
    folder = Path(os.environ.get(LOCK_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"autokd-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LatencyLockError(
            f"{folder} is not a folder (a symlink or a file): remove it, autokd recreates it"
        )
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LatencyLockError(
            f"{folder} belongs to another user or others can write to it (mode {stat.S_IMODE(info.st_mode):o}): "
            "remove it, autokd recreates it private"
        )
    return folder / "latency.lock"


def _turnstile(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".turnstile")


# How long a measurement waits for the cores, or training for a measurement, before going on without:
# a process stopped with Ctrl-Z keeps its lock, and must not stall every other study for ever.
LOCK_WAIT_S = 120.0
# After one such wait, how long this process goes on without waiting (an attempt at once only).
STUCK_FOR_S = 600.0
_stuck_until = 0.0


def _acquire(handle: int, mode: int) -> bool:
    global _stuck_until
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    if time.monotonic() < _stuck_until:
        return False
    deadline, delay = time.monotonic() + LOCK_WAIT_S, 0.005
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(2 * delay, 0.25)
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    _stuck_until = time.monotonic() + STUCK_FOR_S
    return False


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    """Hold ``path`` locked in ``mode`` for the block; yields False when it could not be had in time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_NOFOLLOW: a symlink planted at the lock's path is an error, never followed.
        handle = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise LatencyLockError(f"cannot open the latency lock {path} ({exc.strerror}): remove it") from None
    try:
        yield _acquire(handle, mode)
    finally:
        os.close(handle)  # closing the descriptor releases its lock


@contextlib.contextmanager
def exclusive(lock_path: Path | None) -> Iterator[bool]:
    """Hold the cores alone (no-op without a path): no other measurement and no training meanwhile.

    Yields whether it got them: after :data:`LOCK_WAIT_S` (a holder stopped with Ctrl-Z, say) the
    block runs anyway, and its measurement is marked as not exclusive.
    """
    if lock_path is None:
        yield True
        return
    with contextlib.ExitStack() as stack:
        with _flock(_turnstile(lock_path), fcntl.LOCK_EX) as queued:  # new training waits behind us
            alone = queued and stack.enter_context(_flock(lock_path, fcntl.LOCK_EX))
        yield bool(alone)


class SharedCores:
    """Training's share of the cores: held while training, released for a moment between epochs.

    Use as a context manager around training and call :meth:`step_aside` between epochs, so that a
    measurement waiting in another process gets the cores. A no-op without a lock path.
    """

    def __init__(self, lock_path: Path | None) -> None:
        self.lock_path = lock_path
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> SharedCores:
        if self.lock_path is not None:
            self._stack = contextlib.ExitStack()
            with _flock(_turnstile(self.lock_path), fcntl.LOCK_EX):  # wait behind queued measurements
                pass
            # Not had in time (a measuring process stopped with Ctrl-Z): train anyway.
            self._stack.enter_context(_flock(self.lock_path, fcntl.LOCK_SH))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def step_aside(self) -> None:
        """Release and take the shared lock again, letting a queued measurement run in between."""
        if self._stack is not None:
            self.__exit__()
            self.__enter__()


def measure_latency(
    model: DeployedModel | nn.Module,
    example: torch.Tensor,
    *,
    threads: int = 1,
    min_run_time_s: float = 0.3,
    warmup: int = 5,
    min_repeats: int = 10,
    lock_path: Path | None = None,
) -> Latency:
    """Median/IQR wall time of one forward pass of ``example`` through ``model`` on its runtime.

    A plain ``nn.Module`` is timed in FP32 torch eager mode. The time is split into at least
    ``min_repeats`` blocks of equal call counts, each block's mean is one sample, and sampling goes on
    until ``min_run_time_s`` has passed (``blocked_autorange`` alone often returns one block for a
    sub-millisecond call, which has no spread to report).
    """
    with quiet():  # importing it makes torch log a note about CUDA on CPU-only machines
        from torch.utils import benchmark

    deployed = model if isinstance(model, DeployedModel) else TorchFP32Model(model, "fp32")
    with exclusive(lock_path) as alone:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            forward = deployed.timing_call(example, threads)  # compiles, builds sessions: not timed
            for _ in range(warmup):
                forward()
        finally:
            torch.set_num_threads(previous)
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
        one_call = timer.timeit(1).mean
        calls_per_block = max(1, int(min_run_time_s / min_repeats / max(one_call, 1e-7)))
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_repeats or time.perf_counter() - start < min_run_time_s:
            times.append(timer.timeit(calls_per_block).mean)
    q1, median, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    return Latency(
        median_ms=float(median),
        iqr_ms=float(q3 - q1),
        batch_size=int(example.shape[0]),
        threads=threads,
        runtime=deployed.runtime,
        runtime_version=deployed.runtime_version,
        precision=deployed.precision,
        repeats=len(times),
        cpu=cpu_model(),
        torch_version=torch.__version__,
        exclusive=alone,
    )


def latency_example(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` images, rows repeated when the split is smaller than the batch."""
    example = images[:batch_size]
    if len(example) < batch_size:
        example = example.repeat(batch_size // len(example) + 1, 1, 1, 1)[:batch_size]
    return example.contiguous()
