"""Quantization-aware training: the last epochs train under the x86 INT8 recipe's fake quantization.

The trained FP32 student is captured in training mode by ``torch.export`` and torchao's
``prepare_qat_pt2e`` inserts fake quantization with the same scheme every backend deploys (s8
per-channel symmetric weights on BatchNorm-folded convolutions, u8 per-tensor activations). The
returned :class:`QATStudent` speaks the slice of timm's API the training loop uses, so distillation
plugins that read features keep working. Afterwards :func:`copy_weights_back` puts the trained
weights (and BatchNorm statistics) into the eager student, which any backend then quantizes with its
own calibration: QAT changes what is quantized, not how it is deployed.

Conv-BN folding under QAT divides by the BatchNorm scale, so a BatchNorm weight of exactly zero (timm's
``zero_init_last`` on an untrained ResNet) gives NaN at the first step; QAT therefore only starts after
at least one FP32 epoch and refuses a student with zero BatchNorm weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autokd.quantize import QuantizationError, quiet
from autokd.quantize.pt2e_x86 import export_graph, x86_quantizer


class _LogitsAndFeatures(nn.Module):
    """The student returning its logits followed by the stage outputs at ``indices`` (export wrapper)."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.indices:
            return (self.model(x),)
        final, intermediates = self.model.forward_intermediates(x, indices=self.indices)
        return (self.model.forward_head(final), *intermediates)


class QATStudent(nn.Module):
    """A fake-quantized student for the training loop: ``forward`` gives logits, and
    ``forward_intermediates``/``forward_head`` give the stage outputs it was prepared with."""

    def __init__(self, graph: nn.Module, feature_indices: Sequence[int], feature_info: list) -> None:
        super().__init__()
        self.graph = graph
        self.feature_indices = sorted(feature_indices)
        self.feature_info = feature_info

    def train(self, mode: bool = True) -> QATStudent:
        with quiet():
            from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list]:
        if sorted(indices) != self.feature_indices:
            raise QuantizationError(
                f"QAT student was prepared for stages {self.feature_indices}, not {indices}"
            )
        logits, *features = self.graph(x)
        return logits, list(features)

    def forward_head(self, logits: torch.Tensor) -> torch.Tensor:
        return logits  # forward_intermediates already ran the head


def prepare_qat(model: nn.Module, example: torch.Tensor, feature_indices: Sequence[int] = ()) -> QATStudent:
    """Fake-quantized training copy of ``model`` (which is left untouched) returning logits and the
    stage outputs at ``feature_indices`` (timm feature indices, as the training loop computes them)."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    zero = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.weight is not None
        and bool((module.weight == 0).any())
    ]
    if zero:
        raise QuantizationError(
            f"QAT cannot fold BatchNorm layers with zero weights ({', '.join(zero[:3])}): "
            "train at least one FP32 epoch first"
        )
    import copy

    wrapper = _LogitsAndFeatures(copy.deepcopy(model).train(), feature_indices)
    if len(example) < 2:
        raise QuantizationError("QAT needs an example batch of at least 2 images (BatchNorm in training)")
    graph = export_graph(wrapper, example, min_batch=2)
    with quiet():
        prepared = prepare_qat_pt2e(graph, x86_quantizer(is_qat=True))
    student = QATStudent(prepared, feature_indices, list(getattr(model, "feature_info", [])))
    return student.train()


def copy_weights_back(qat_student: QATStudent, model: nn.Module) -> None:
    """Load the QAT-trained parameters and BatchNorm statistics into the eager ``model`` (in place)."""
    wanted = model.state_dict()
    trained = {
        key.removeprefix("model."): value
        for key, value in qat_student.graph.state_dict().items()
        if key.removeprefix("model.") in wanted
    }
    missing = sorted(set(wanted) - set(trained))
    if missing:
        raise QuantizationError(f"QAT graph lost weights of the student: {', '.join(missing[:5])}")
    model.load_state_dict(trained)
