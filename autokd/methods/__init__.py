"""Distillation methods: the contract every method implements, its registry, and how methods are found.

A method is an ``nn.Module`` subclass decorated with :func:`register_method`. It declares its kind,
what it needs from the forward passes and the hyperparameters it brings into the search space, and
returns one scalar loss from :class:`DistillInputs`.

Methods are found in three ways (see :mod:`autokd.registry`): the built-ins, one file each in the
repository's top-level ``plugins/`` folder, installed as the package ``autokd.methods.builtin``; files
or folders a study names under ``extensions:``; installed packages that declare an entry point in the
``autokd.extensions`` group (``autokd.methods`` and the 0.1 name ``autokd.plugins`` work too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from autokd.registry import ExtensionLoadError, Registry, load_extension_files

Kind = Literal["response", "feature", "relation", "self"]


@dataclass(frozen=True)
class Hyperparameter:
    """A float hyperparameter a method adds to the search space, with its literature default."""

    low: float
    high: float
    default: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} outside [{self.low}, {self.high}]")


@dataclass
class DistillInputs:
    """What a method sees for one batch.

    ``student_features``/``teacher_features`` hold one tensor per stage that the method asked for in
    ``needs_features`` (stage indices of the timm model, negative counting from the last stage), in
    that order; repeats that name the same stage of a shallow model appear once. Teacher tensors never
    carry gradients. There is no temperature here: a method that softens logits declares its own
    ``temperature`` hyperparameter and reads ``self.temperature``.
    """

    student_logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_features: list[torch.Tensor] = field(default_factory=list)
    teacher_features: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInfo:
    """Shapes a method may need to build adapters: channels per requested stage and the class count."""

    feature_channels: tuple[int, ...]
    num_classes: int


class Method(nn.Module):
    """Base class of every distillation loss.

    Subclasses set ``kind``, ``needs_teacher_logits``, ``needs_features`` (timm stage indices,
    negative from the last stage; the method receives exactly those stages of the student, and of the
    teacher unless ``needs_teacher_features`` is False) and ``hyperparameters``,
    accept their hyperparameters as keyword arguments in ``__init__`` (each becomes an attribute,
    e.g. ``self.temperature`` for a method that softens logits) and implement ``forward``, which
    returns the method's loss alone: the trainer mixes it with the task loss as
    ``(1 − share) · CE + share · Σ weight · loss``.
    Learnable parts (adapters) are ordinary submodules: the trainer optimises them with the student
    and discards them afterwards.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind]
    needs_teacher_logits: ClassVar[bool] = True
    needs_features: ClassVar[tuple[int, ...]] = ()
    needs_teacher_features: ClassVar[bool] = True
    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {}

    def __init__(self, student: ModelInfo | None = None, teacher: ModelInfo | None = None, **hparams: float):
        super().__init__()
        unknown = set(hparams) - set(self.hyperparameters)
        if unknown:
            raise TypeError(f"method '{self.name}' has no hyperparameter(s) {sorted(unknown)}")
        for key, spec in self.hyperparameters.items():
            setattr(self, key, float(hparams.get(key, spec.default)))
        self.student_info = student
        self.teacher_info = teacher

    def forward(self, inputs: DistillInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("distillation method", builtins="autokd.methods.builtin")
_KINDS = ("response", "feature", "relation", "self")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` subclass under ``name`` (its name in study files)."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate an autokd.methods.Method subclass")
        if getattr(cls, "kind", None) not in _KINDS:
            raise TypeError(f"method '{name}' must set kind to one of {', '.join(_KINDS)}")
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def load_methods(paths: Iterable[str | Path] = ()) -> None:
    """Make every method available: built-ins, installed entry points, then a study's extension files."""
    METHODS.load()
    load_extension_files(paths)


# The 0.1 names, kept for one release: extension files written against them keep working.
DistillationPlugin = Method
PLUGINS = METHODS
register_plugin = register_method
load_plugins = load_methods
PluginLoadError = ExtensionLoadError
