"""ONNX Runtime static INT8: QDQ format, u8 activations, s8 per-channel weights, MinMax calibration.

The FP32 student is exported to ONNX in eval mode (BatchNorm folded into the convolutions), ORT's
pre-processing runs shape inference and graph fusions, and ``quantize_static`` inserts Q/DQ pairs
calibrated on the training batches; ORT fuses Q/DQ around Conv, Gemm and MatMul into integer kernels
at session creation and folds ReLU into the preceding quantized convolution. The classifier's output
(the logits) stays FP32: quantizing it to 256 levels only creates argmax ties. u8 activations, since
s8 ones are several times slower on x86 (docs/quantization.md).

The legacy TorchScript exporter is used while torch ships it: it is an order of magnitude faster on
small students than the torch.export-based exporter, which takes over when the legacy one is gone.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autokd.quantize import (
    DeployedModel,
    QuantizationBackend,
    QuantizationError,
    eval_copy,
    quiet,
    register_backend,
)

INPUT, OUTPUT = "images", "logits"
OPSET = 17


def export_onnx(model: nn.Module, example: torch.Tensor) -> tuple[bytes, str]:
    """``model`` (a copy in eval mode) as ONNX bytes with a dynamic batch axis, and the exporter used."""
    model = eval_copy(model)
    errors = []
    try:
        buffer = io.BytesIO()
        with quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        return buffer.getvalue(), "torchscript"
    except Exception as exc:  # the legacy exporter is deprecated and may be gone: use torch.export's
        errors.append(f"torchscript exporter: {type(exc).__name__}: {exc}")
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: "batch"},),
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(str(path), external_data=False)
            return path.read_bytes(), "torch.export"
    except Exception as exc:
        errors.append(f"torch.export exporter: {type(exc).__name__}: {exc}")
    raise QuantizationError("ONNX export failed; " + "; ".join(errors))


def _session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not for the user
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _to_numpy(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


class OnnxRuntimeModel(DeployedModel):
    """An ONNX model (FP32 or QDQ INT8) run by ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"
    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, precision: str, exporter: str = "") -> None:
        import onnxruntime as ort

        self.model_bytes = model_bytes
        self.precision = precision
        self.exporter = exporter
        self.runtime_version = ort.__version__
        self._sessions: dict[int, object] = {}

    def session(self, threads: int):
        """The (cached) inference session using ``threads`` intra-op threads."""
        if threads not in self._sessions:
            self._sessions[threads] = _session(self.model_bytes, threads)
        return self._sessions[threads]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        session = self.session(max(1, torch.get_num_threads()))
        return torch.from_numpy(session.run([OUTPUT], {INPUT: _to_numpy(images)})[0])

    def timing_call(self, example: torch.Tensor, threads: int) -> Callable[[], object]:
        session, feed = self.session(threads), {INPUT: _to_numpy(example)}
        return lambda: session.run([OUTPUT], feed)

    def weight_bytes(self) -> int:
        """Every initializer at its dtype's width, except int64 ones (shapes and axes, not weights).

        In a QDQ model that is each quantized layer's s8 weights, their per-channel FP32 scales and s8
        zero points, the int32 bias with its scales and zero points, the activations' scales and zero
        points, and whatever stayed FP32.
        """
        import onnx
        from onnx import numpy_helper

        graph = onnx.load_from_string(self.model_bytes).graph
        total = 0
        for initializer in graph.initializer:
            array = numpy_helper.to_array(initializer)
            if array.dtype != np.int64:
                total += array.size * array.itemsize
        return total

    def save(self, path: Path) -> Path:
        path = Path(path).with_suffix(".onnx")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.model_bytes)
        return path


class _Batches:
    """ORT's CalibrationDataReader protocol over a list of image batches."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._feeds = iter([{INPUT: _to_numpy(batch)} for batch in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_onnx(model_bytes: bytes, calibration: Sequence[torch.Tensor]) -> bytes:
    """Static QDQ INT8 version of an FP32 ONNX model, calibrated on ``calibration``."""
    with quiet():  # importing it makes torch log a note about CUDA
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        with quiet():  # per-tensor notes from the quantizer a user cannot act on
            quant_pre_process(str(fp32), str(pre))
            quantize_static(str(pre), str(int8), _Batches(calibration), **static_options())
        return int8.read_bytes()


def static_options() -> dict:
    """autokd's ``quantize_static`` settings (see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return dict(
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
    )


@register_backend(
    "onnxruntime",
    runtime=OnnxRuntimeModel.runtime,
    artifact_format="onnx",
    artifact_suffix=".onnx",
    supported_families=("resnet", "convnext"),
    refusals={
        "mobilenetv3": "its INT8 model agrees with FP32 on 95.5-96.6% of test images of trained Fashion-MNIST "
        "students (either stem), below the 98% bar, with or without QAT; see docs/quantization.md",
        "mobilenetv4": "its INT8 model agrees with FP32 on 97.6% of test images of a Fashion-MNIST student "
        "trained 8 epochs on the full training set (small stem), below the 98% bar; see docs/quantization.md",
    },
)
@dataclass(frozen=True)
class OnnxRuntimeBackend(QuantizationBackend):
    """ONNX Runtime static INT8 (see the module docstring)."""

    def quantize(self, model: nn.Module, calibration: Sequence[torch.Tensor]) -> OnnxRuntimeModel:
        model_bytes, exporter = export_onnx(model, calibration[0])
        return OnnxRuntimeModel(quantize_onnx(model_bytes, calibration), "int8", exporter)

    def float_model(self, model: nn.Module, example: torch.Tensor) -> OnnxRuntimeModel:
        model_bytes, exporter = export_onnx(model, example)
        return OnnxRuntimeModel(model_bytes, "fp32", exporter)

    def quantize_with_fp32(
        self, model: nn.Module, calibration: Sequence[torch.Tensor]
    ) -> tuple[OnnxRuntimeModel, OnnxRuntimeModel]:
        model_bytes, exporter = export_onnx(model, calibration[0])  # one export serves both
        int8 = OnnxRuntimeModel(quantize_onnx(model_bytes, calibration), "int8", exporter)
        return int8, OnnxRuntimeModel(model_bytes, "fp32", exporter)

    def load(self, path: Path) -> OnnxRuntimeModel:
        import onnx
        from google.protobuf.message import DecodeError
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        model_bytes = Path(path).read_bytes()
        try:
            nodes = onnx.load_from_string(model_bytes).graph.node
            quantized = any(node.op_type in ("QuantizeLinear", "QLinearConv") for node in nodes)
            model = OnnxRuntimeModel(model_bytes, "int8" if quantized else "fp32")
            # The session now (cached for the first call): a truncated or garbled file fails here, not
            # in the middle of whatever runs it. An empty file even parses as an empty ONNX model.
            model.session(max(1, torch.get_num_threads()))
        except (
            DecodeError,
            ort_errors.Fail,
            ort_errors.InvalidArgument,
            ort_errors.InvalidGraph,
            ort_errors.InvalidProtobuf,
            ort_errors.NoModel,
            ort_errors.NotImplemented,
            ort_errors.RuntimeException,
        ) as exc:
            raise QuantizationError(f"not a loadable ONNX model ({type(exc).__name__})") from None
        return model
