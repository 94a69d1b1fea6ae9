"""INT8 post-training quantization behind a small backend interface; the one module that owns it.

A backend turns a trained FP32 model plus calibration batches into a deployable INT8 model that runs
on a named runtime. Backends register themselves in :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autokd.registry import Registry


@dataclass(frozen=True)
class QuantizationBackend:
    """``quantize(model, calibration_batches) -> int8 model`` plus the runtime its output runs on."""

    name: str
    runtime: str
    quantize: Callable[[nn.Module, Iterable[torch.Tensor]], nn.Module]


BACKENDS: Registry[QuantizationBackend] = Registry("quantization backend")


def register_backend(backend: QuantizationBackend) -> QuantizationBackend:
    """Add ``backend`` to the registry under its name."""
    return BACKENDS.register(backend.name)(backend)


def quantize(model: nn.Module, calibration: Iterable[torch.Tensor], backend: str = "fx_x86") -> nn.Module:
    """Quantize ``model`` (left untouched) to INT8 with ``backend``, calibrating on ``calibration``."""
    return BACKENDS.get(backend).quantize(model, calibration)


def _is_quantized_module(module: nn.Module) -> bool:
    # torch.ao's quantized layers expose weight() as a method returning a quantized tensor.
    weight = getattr(module, "weight", None)
    return callable(weight) and not isinstance(weight, nn.Module) and weight().is_quantized


def deployed_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights as deployed, from element counts and bit-widths (never from file sizes).

    Quantized layers count their INT8 weights (1 byte each), their per-channel scales and zero points
    (4 bytes each) and their FP32 bias; every other parameter or floating-point buffer (layers left in
    FP32, normalisation statistics) counts 4 bytes per element at its own dtype's width.
    """
    total = 0
    for module in model.modules():
        if _is_quantized_module(module):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                total += (
                    weight.q_per_channel_scales().numel() * 4 + weight.q_per_channel_zero_points().numel() * 4
                )
            else:
                total += 8
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            if bias is not None:
                total += bias.numel() * bias.element_size()
            continue
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if tensor.is_floating_point():
                total += tensor.numel() * tensor.element_size()
    return total


def fp32_weight_bytes(model: nn.Module) -> int:
    """Bytes of an FP32 model's parameters (4 per element)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


from autokd.quantize import fx_x86  # noqa: E402,F401
