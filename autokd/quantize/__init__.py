"""INT8 quantization behind a small backend interface; the one module that owns it.

A backend turns a trained FP32 student plus calibration batches into a :class:`DeployedModel`: the
INT8 model as it runs on a named runtime, callable on image tensors, timeable, sizeable and savable
as a deployable artifact. The same backend also gives the FP32 model on that runtime, so that speed-ups
are always INT8 against FP32 on the same runtime (and the teacher's latency is measured the same way).

A backend is one class in one file of this package, decorated with :func:`register_backend`, which
carries its metadata: the runtime, the artifact format and file suffix (what ``autokd export
--format`` offers), and the student families it quantizes correctly (top-1 agreement with FP32 of at
least :data:`AGREEMENT_THRESHOLD` on trained students; a family may also claim a backend itself, see
:class:`autokd.students.StudentFamily`). A study pairing a family with a backend that does not
support it is refused when it is loaded. Which backends exist, why, and their measured speed-ups are
in ``docs/quantization.md``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autokd.registry import Registry

AGREEMENT_THRESHOLD = 0.98


class QuantizationError(RuntimeError):
    """A backend could not quantize, run, save or load a model; the message names what and why."""


class DeployedModel(ABC):
    """A model as it runs on its runtime: logits for a batch of images, timeable, sizeable, savable."""

    backend: str
    runtime: str
    runtime_version: str
    precision: str  # "int8" or "fp32"

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (FP32 tensor) for a batch of normalised images (a tensor or a numpy array)."""

    @abstractmethod
    def timing_call(self, example: torch.Tensor, threads: int) -> Callable[[], object]:
        """A zero-argument function running one forward pass of ``example`` on ``threads`` threads.

        Everything that is not inference (conversion of the input, session or graph creation, a
        compilation) happens before it is returned, so that only the forward pass is timed.
        """

    @abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of the weights as deployed, from element counts and bit-widths (not file sizes)."""

    def save(self, path: Path) -> Path:
        """Write the deployable artifact to ``path`` (suffix given by the backend) and return it."""
        raise QuantizationError(f"backend '{self.backend}' has no artifact format; export with onnx or pt2")


@dataclass(frozen=True)
class QuantizationBackend(ABC):
    """``quantize(model, calibration) -> DeployedModel`` plus the FP32 model on the same runtime."""

    name: str
    runtime: str
    artifact_format: str | None = None  # what ``autokd export --format`` calls it; None: no artifact
    artifact_suffix: str | None = None  # the artifact file's suffix, e.g. ".onnx"
    supported_families: tuple[str, ...] = ()  # measured to pass the agreement bar on this backend
    refusals: dict[str, str] = field(default_factory=dict)  # family -> why it is refused (measured)

    def refusal(self, family: str, stem: str | None = None) -> str | None:
        """Why ``family`` (with ``stem``, where given) cannot be deployed with this backend, or None."""
        from autokd.students import get_family

        student = get_family(family)
        # A fixed timm:NAME student is the user's own choice: every trial measures its agreement and
        # the report flags it when INT8 disagrees with FP32.
        if student.fixed or family in self.supported_families:
            return None
        if self.name in student.int8_backends:
            if stem is None or not student.int8_stems or stem in student.int8_stems:
                return None
            return (
                f"its INT8 agreement was measured with its {' and '.join(student.int8_stems)} stem only; with the "
                f"{stem} stem (search_space.stem, or images above 64 pixels) it is not claimed; see docs/quantization.md"
            )
        return self.refusals.get(family, "its INT8 agreement with FP32 was never measured on this backend")

    @abstractmethod
    def quantize(self, model: nn.Module, calibration: Sequence[torch.Tensor]) -> DeployedModel:
        """Static INT8 model of ``model`` (left untouched) calibrated on the given image batches."""

    @abstractmethod
    def float_model(self, model: nn.Module, example: torch.Tensor) -> DeployedModel:
        """``model`` in FP32 on this backend's runtime (for speed-ups against the same runtime)."""

    def quantize_with_fp32(
        self, model: nn.Module, calibration: Sequence[torch.Tensor]
    ) -> tuple[DeployedModel, DeployedModel]:
        """The INT8 model and the FP32 model on the same runtime (backends may share work between them)."""
        return self.quantize(model, calibration), self.float_model(model, calibration[0])

    def load(self, path: Path) -> DeployedModel:
        """Load an artifact this backend saved."""
        raise QuantizationError(f"backend '{self.name}' has no artifact format")


BACKENDS: Registry[QuantizationBackend] = Registry("quantization backend", builtins="autokd.quantize")
DEFAULT_BACKEND = "onnxruntime"


def register_backend(
    name: str, **metadata
) -> Callable[[type[QuantizationBackend]], type[QuantizationBackend]]:
    """Class decorator: instantiate the backend with ``name`` and its metadata and register it."""

    def decorator(cls: type[QuantizationBackend]) -> type[QuantizationBackend]:
        BACKENDS.register(name, cls(name=name, **metadata))
        return cls

    return decorator


def artifact_formats() -> list[str]:
    """The artifact formats of the registered backends (``autokd export --format`` choices)."""
    return sorted({b.artifact_format for _, b in BACKENDS.items() if b.artifact_format})


def backend_for_suffix(suffix: str) -> QuantizationBackend:
    """The backend whose artifacts end with ``suffix`` (``.onnx``, ``.pt2``)."""
    for _, backend in BACKENDS.items():
        if backend.artifact_suffix == suffix:
            return backend
    suffixes = sorted(b.artifact_suffix for _, b in BACKENDS.items() if b.artifact_suffix)
    raise QuantizationError(f"unknown artifact type '{suffix}'; allowed: {', '.join(suffixes)}")


def quantize(
    model: nn.Module, calibration: Sequence[torch.Tensor], backend: str = DEFAULT_BACKEND
) -> DeployedModel:
    """Quantize ``model`` (left untouched) to INT8 with ``backend``, calibrating on ``calibration``."""
    batches = [batch for batch in calibration if len(batch)]
    if not batches:
        raise QuantizationError("quantization needs at least one non-empty calibration batch")
    return BACKENDS.get(backend).quantize(model, batches)


def backend_for_format(artifact_format: str) -> QuantizationBackend:
    """The backend whose artifacts have the given format (``onnx``, ``pt2``)."""
    for _, backend in BACKENDS.items():
        if backend.artifact_format == artifact_format:
            return backend
    raise QuantizationError(
        f"unknown artifact format '{artifact_format}'; allowed: {', '.join(artifact_formats())}"
    )


def calibration_batches(images: torch.Tensor, batch_size: int, count: int) -> list[torch.Tensor]:
    """The first ``count`` batches of ``images`` (the training split, already shuffled by the loader)."""
    batches = [images[i * batch_size : (i + 1) * batch_size] for i in range(count)]
    return [batch for batch in batches if len(batch)]


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 256):
    """Logits of a deployed model (or any callable) for every row of ``images`` (a tensor, or streamed)."""
    from autokd.data.stream import batches

    return torch.cat([model(x) for _, x in batches(images, batch_size)])


def top1(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of a deployed model on (images, labels)."""
    return float((predict(model, images).argmax(1) == labels).float().mean()) if len(labels) else 0.0


# Loggers that report library internals a user cannot act on (ORT's quantizer logs through the root
# logger; torch warns about CUDA and pytree registrations when onnxruntime.quantization or torchao load).
_NOISY_LOGGERS = (
    "",
    "torch.utils._pytree",
    "torch.utils.cpp_extension",
    "torch._export",
    "torch.export",
    "torch._dynamo",
    "torch._inductor",
    "torch.onnx",
    "torchao",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and library logging below errors around quantization, export and compilation."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode on the CPU (backends never touch the caller's model; the
    deployment runtimes are CPU ones)."""
    return copy.deepcopy(model).cpu().eval()


def fp32_weight_bytes(model: nn.Module) -> int:
    """Bytes of an FP32 model's parameters (4 per element)."""
    return tensor_bytes(list(model.parameters()))


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of ``tensors`` at their own dtypes' widths, counted from element counts."""
    return sum(t.numel() * t.element_size() for t in tensors)
