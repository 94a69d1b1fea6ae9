"""torch-native static INT8 that survives torch.ao's eager/FX removal: torchao PT2E, compiled by inductor.

``torch.export`` captures the student with a dynamic batch axis; torchao's ``X86InductorQuantizer``
annotates it (s8 per-channel symmetric weights, u8 per-tensor activations, conv-BN(-ReLU) patterns
fused), observers are calibrated on the training batches and ``convert_pt2e`` folds the weights into
INT8 constants with Q/DQ nodes around them. That graph is only a reference until inductor lowers it:
``torch.compile`` with freezing turns Q/DQ-conv patterns into oneDNN INT8 kernels. Quantized convolutions
do not compile with a dynamic batch in torch 2.14, so one graph is compiled per batch shape; evaluation
pads the last chunk so that it needs a single shape. ``convert_pt2e`` keeps the FP32 weights as unused
parameters: they are dropped, so neither the size count nor the saved ``.pt2`` file carries them.
"""

from __future__ import annotations

import copy
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autokd.quantize import (
    DeployedModel,
    QuantizationBackend,
    QuantizationError,
    eval_copy,
    quiet,
    register_backend,
    tensor_bytes,
)

EVAL_CHUNK = 256
MAX_BATCH = 1 << 16


def export_graph(model: nn.Module, example: torch.Tensor, *, min_batch: int = 1) -> torch.fx.GraphModule:
    """``model`` captured by ``torch.export`` with a dynamic batch axis, as a graph module."""
    batch = torch.export.Dim("batch", min=min_batch, max=MAX_BATCH)
    with quiet():
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()


def x86_quantizer(*, is_qat: bool = False):
    """torchao's x86 INT8 recipe: s8 per-channel weights, u8 activations (the inductor kernels' layout)."""
    with quiet():  # importing torchao logs a pytree deprecation note
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def drop_unused_parameters(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove parameters and buffers no node reads (``convert_pt2e`` leaves the FP32 weights behind)."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]:
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = graph.get_submodule(owner_name) if owner_name else graph
            delattr(owner, attr)
    return graph


def _graph_tensors(graph: torch.fx.GraphModule) -> list[torch.Tensor]:
    tensors = []
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            value = graph
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                tensors.append(value)
    return tensors


class CompiledTorchModel(DeployedModel):
    """A graph (PT2E INT8 or the FP32 student) compiled by inductor with freezing, one graph per batch shape."""

    backend = "pt2e_x86"
    runtime = "torch-inductor"

    def __init__(self, graph: nn.Module, precision: str, image_shape: tuple[int, ...] = ()) -> None:
        self.graph = graph if isinstance(graph, torch.fx.GraphModule) else graph.eval()
        self.precision = precision
        self.image_shape = image_shape  # (channels, height, width): what a saved program is exported with
        self.runtime_version = torch.__version__
        self._compiled: nn.Module | None = None
        self._shapes: set[int] = set()

    def _compile(self, graph: nn.Module) -> Callable:
        return torch.compile(graph, dynamic=False)

    def _run(self, compiled: Callable, images: torch.Tensor) -> torch.Tensor:
        # Freezing (constant-folding the weights, which lowers Q/DQ-conv patterns to oneDNN INT8
        # kernels) must be on when a graph compiles, which is at its first call with a new shape;
        # passing it through torch.compile's options does not reach the quantization passes.
        from torch._inductor import config as inductor_config

        with torch.inference_mode(), quiet(), inductor_config.patch(freezing=True):
            return compiled(images)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images, dtype=torch.float32)  # numpy arrays too
        if self._compiled is None:
            self._compiled = self._compile(self.graph)
        outputs = []
        for start in range(0, len(images), EVAL_CHUNK):
            chunk = images[start : start + EVAL_CHUNK]
            size = len(chunk)
            if size not in self._shapes and size != EVAL_CHUNK:  # pad rather than compile another shape
                padding = chunk[:1].expand(EVAL_CHUNK - size, *chunk.shape[1:])
                chunk = torch.cat([chunk, padding])
            self._shapes.add(len(chunk))
            outputs.append(self._run(self._compiled, chunk)[:size])
        return torch.cat(outputs)

    def timing_call(self, example: torch.Tensor, threads: int) -> Callable[[], object]:
        # A copy of its own: inductor bakes the thread count into the kernels it compiles, and the
        # evaluation graph may have been compiled with another count.
        compiled = self._compile(copy.deepcopy(self.graph))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            self._run(compiled, example)  # compiles before anything is timed
        finally:
            torch.set_num_threads(previous)

        def forward() -> object:
            with torch.inference_mode():
                return compiled(example)

        return forward

    def weight_bytes(self) -> int:
        """Tensors the graph reads (INT8 weights, their per-channel scales and zero points, FP32 biases
        and layers left in FP32) at their dtypes' widths; per-tensor activation scales are constants."""
        if isinstance(self.graph, torch.fx.GraphModule):
            return tensor_bytes(_graph_tensors(self.graph))
        return tensor_bytes(list(self.graph.parameters()))

    def save(self, path: Path) -> Path:
        if not isinstance(self.graph, torch.fx.GraphModule):
            raise QuantizationError("only the quantized graph is saved as a .pt2 artifact")
        path = Path(path).with_suffix(".pt2")
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros(2, *self.image_shape)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with quiet():
            program = torch.export.export(self.graph, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        return path


@register_backend(
    "pt2e_x86",
    runtime=CompiledTorchModel.runtime,
    artifact_format="pt2",
    artifact_suffix=".pt2",
    supported_families=("resnet", "convnext"),
    refusals={
        "mobilenetv3": "its INT8 model agrees with FP32 on 97.2% of test images of trained Fashion-MNIST "
        "students, below the 98% bar; see docs/quantization.md",
        "mobilenetv3_minimal": "its INT8 model agrees with FP32 on 97.0% of test images of a Fashion-MNIST "
        "student trained 4 epochs on 10,800 images (ImageNet stem), below the 98% bar; not measured on a "
        "fully trained one; see docs/quantization.md",
        "mobilenetv4": "its INT8 model agrees with FP32 on 95.1% of test images of a Fashion-MNIST student "
        "trained 4 epochs on 10,800 images (small stem), below the 98% bar; see docs/quantization.md",
        "ghostnet": "inductor had not finished compiling a width-0.25 GhostNet student's INT8 graph after 5 "
        "minutes, too long for a trial; see docs/quantization.md",
        "efficientnet_lite": "its INT8 model agrees with FP32 on 93.4% of test images of a Fashion-MNIST "
        "student trained 4 epochs on 10,800 images (ImageNet stem), below the 98% bar; not measured on a "
        "fully trained one; see docs/quantization.md",
    },
)
@dataclass(frozen=True)
class PT2EX86Backend(QuantizationBackend):
    """torchao PT2E with the x86 inductor recipe, deployed compiled (see the module docstring)."""

    def quantize(self, model: nn.Module, calibration: Sequence[torch.Tensor]) -> CompiledTorchModel:
        graph = export_graph(eval_copy(model), calibration[0])
        with quiet():
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            prepared = prepare_pt2e(graph, x86_quantizer())
            with torch.no_grad():
                for batch in calibration:
                    prepared(batch)
            converted = drop_unused_parameters(convert_pt2e(prepared))
        return CompiledTorchModel(converted, "int8", tuple(calibration[0].shape[1:]))

    def float_model(self, model: nn.Module, example: torch.Tensor) -> CompiledTorchModel:
        return CompiledTorchModel(eval_copy(model), "fp32")

    def load(self, path: Path) -> CompiledTorchModel:
        try:
            with quiet():
                program = torch.export.load(str(path))
        except (RuntimeError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise QuantizationError(f"not a loadable torch.export program ({type(exc).__name__})") from None
        graph = program.module()
        placeholder = next(n for n in graph.graph.nodes if n.op == "placeholder")
        return CompiledTorchModel(graph, "int8", tuple(int(s) for s in placeholder.meta["val"].shape[1:]))
