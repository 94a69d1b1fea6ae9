"""A plain FP32 torch module run as is (torch eager): how latency times a model that no backend deployed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from autokd.quantize import DeployedModel, tensor_bytes


class TorchFP32Model(DeployedModel):
    """An FP32 ``nn.Module`` called in torch eager mode."""

    runtime = "torch-eager"

    def __init__(self, module: nn.Module, precision: str, backend: str = "torch-eager") -> None:
        self.module = module.eval()
        self.precision = precision
        self.backend = backend
        self.runtime_version = torch.__version__

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(torch.as_tensor(images, dtype=torch.float32))  # numpy arrays too

    def timing_call(self, example: torch.Tensor, threads: int) -> Callable[[], object]:
        module = self.module

        def forward() -> object:
            with torch.inference_mode():
                return module(example)

        return forward

    def weight_bytes(self) -> int:
        """Parameters and floating-point buffers at their dtypes' widths."""
        buffers = [b for b in self.module.buffers() if b.is_floating_point()]
        return tensor_bytes(list(self.module.parameters()) + buffers)
