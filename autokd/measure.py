"""Latency of a deployed model: median and IQR of one forward pass, measured alone on its cores.

Measurements are serialised through a file lock, so that concurrent trials (several workers, Ray)
never time a model while another one trains on the same cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark


@dataclass(frozen=True)
class Latency:
    """Median and interquartile range of one forward pass, with the conditions it was measured under."""

    median_ms: float
    iqr_ms: float
    batch_size: int
    threads: int
    runtime: str
    cpu: str
    torch_version: str

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def exclusive(lock_path: Path | None) -> Iterator[None]:
    """Hold an exclusive file lock (no-op without a path) so that only one measurement runs at a time."""
    if lock_path is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    threads: int = 1,
    min_run_time_s: float = 0.3,
    warmup: int = 5,
    runtime: str = "torch eager",
    lock_path: Path | None = None,
) -> Latency:
    """Median/IQR wall time of ``model(example)`` over ``torch.utils.benchmark``'s blocked autorange."""
    model.eval()
    with exclusive(lock_path), torch.inference_mode():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(warmup):
                model(example)
        finally:
            torch.set_num_threads(previous)
        timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": example}, num_threads=threads)
        result = timer.blocked_autorange(min_run_time=min_run_time_s)
    return Latency(
        median_ms=result.median * 1e3,
        iqr_ms=result.iqr * 1e3,
        batch_size=int(example.shape[0]),
        threads=threads,
        runtime=runtime,
        cpu=cpu_model(),
        torch_version=torch.__version__,
    )
