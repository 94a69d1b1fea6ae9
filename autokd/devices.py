"""Where training runs: ``training.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and
automatic mixed precision (on CUDA, and bfloat16 on the CPU where a study asks for it).

Teacher training, the teacher-output cache and student training run on the device; quantization and
the latency objective always run on the deployment runtime the study names (a CPU runtime), so
students are moved back to the CPU before they are quantized and measured.
"""

from __future__ import annotations

import contextlib
import re

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(ValueError):
    """The study asks for a device this machine does not have; the message is one line."""


def resolve_device(spec: str = "auto", worker: int = 0) -> torch.device:
    """The torch device ``spec`` names on this machine (``auto``: CUDA, else MPS, else the CPU).

    ``worker``: the index of a ``--workers`` process; with ``cuda`` (no index) or ``auto`` and several
    GPUs, worker i takes GPU i modulo their number, so workers spread over the devices.
    """
    if not DEVICE_PATTERN.fullmatch(spec):
        raise DeviceError(f"field 'training.device' = {spec!r}: use {DEVICE_RULE}")
    cuda, count = torch.cuda.is_available(), torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if spec == "auto":
        if cuda and count:
            return torch.device("cuda", worker % count)
        return torch.device("mps") if mps else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps:
            raise DeviceError("field 'training.device' = 'mps': this machine has no usable Apple MPS device")
        return torch.device("mps")
    if not cuda or not count:
        raise DeviceError(
            f"field 'training.device' = {spec!r}: torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use cpu or auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else worker % count
    if index >= count:
        raise DeviceError(
            f"field 'training.device' = {spec!r}: this machine has {count} CUDA GPU(s), 0-{count - 1}"
        )
    return torch.device("cuda", index)


def amp_dtype(device: torch.device, enabled: bool = True, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype for training on ``device``: bfloat16 on CUDA GPUs that support it, else
    float16 (None when ``enabled`` is False); on the CPU bfloat16 with ``cpu_bf16``, else None (FP32);
    None on any other device."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16 else None
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
