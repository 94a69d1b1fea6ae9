"""Distillation loss plugins: the base class, the registry and the three ways plugins are found.

A plugin is an ``nn.Module`` subclass decorated with :func:`register_plugin`. It declares its kind,
what it needs from the forward passes and the hyperparameters it brings into the search space, and
returns one scalar loss from :class:`DistillInputs`. The trainer adds ``loss_weight × plugin loss``
to the task loss for every plugin a trial uses.

Plugins are found (see :func:`load_plugins`): in the built-in ``plugins`` package, in files or folders
named by a study file, and in installed packages that declare an ``autokd.plugins`` entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from autokd.registry import Registry, RegistryError

Kind = Literal["response", "feature", "relation", "self"]
ENTRY_POINT_GROUP = "autokd.plugins"


class PluginLoadError(RuntimeError):
    """A plugin file failed to import or clashed with another plugin's name."""


@dataclass(frozen=True)
class Hyperparameter:
    """A float hyperparameter a plugin adds to the search space, with its literature default."""

    low: float
    high: float
    default: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} outside [{self.low}, {self.high}]")


@dataclass
class DistillInputs:
    """What a plugin sees for one batch.

    ``student_features``/``teacher_features`` hold one tensor per stage that the plugin asked for in
    ``needs_features`` (stage indices of the timm model, negative counting from the last stage), in
    that order; repeats that name the same stage of a shallow model appear once. Teacher tensors never
    carry gradients.
    """

    student_logits: torch.Tensor
    targets: torch.Tensor
    temperature: float
    teacher_logits: torch.Tensor | None = None
    student_features: list[torch.Tensor] = field(default_factory=list)
    teacher_features: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInfo:
    """Shapes a plugin may need to build adapters: channels per requested stage and the class count."""

    feature_channels: tuple[int, ...]
    num_classes: int


class DistillationPlugin(nn.Module):
    """Base class of every distillation loss.

    Subclasses set ``kind``, ``needs_teacher_logits``, ``needs_features`` (timm stage indices,
    negative from the last stage; the plugin receives exactly those stages of the student, and of the
    teacher unless ``needs_teacher_features`` is False) and ``hyperparameters``,
    accept their hyperparameters as keyword arguments in ``__init__`` and implement ``forward``.
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
            raise TypeError(f"plugin '{self.name}' has no hyperparameter(s) {sorted(unknown)}")
        for key, spec in self.hyperparameters.items():
            setattr(self, key, float(hparams.get(key, spec.default)))
        self.student_info = student
        self.teacher_info = teacher

    def forward(self, inputs: DistillInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


PLUGINS: Registry[type[DistillationPlugin]] = Registry("distillation plugin")
_KINDS = ("response", "feature", "relation", "self")


def register_plugin(name: str) -> Callable[[type[DistillationPlugin]], type[DistillationPlugin]]:
    """Class decorator registering a :class:`DistillationPlugin` subclass under ``name``."""

    def decorator(cls: type[DistillationPlugin]) -> type[DistillationPlugin]:
        if not (isinstance(cls, type) and issubclass(cls, DistillationPlugin)):
            raise TypeError(f"@register_plugin('{name}') must decorate a DistillationPlugin subclass")
        if getattr(cls, "kind", None) not in _KINDS:
            raise TypeError(f"plugin '{name}' must set kind to one of {', '.join(_KINDS)}")
        cls.name = name
        origin = getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
        return PLUGINS.register(name, origin=origin)(cls)

    return decorator


@contextlib.contextmanager
def _loading(what: str, module_name: str) -> Iterator[None]:
    """Turn any import failure of a plugin module into one PluginLoadError naming ``what``.

    Whatever the half-imported module registered is rolled back, so that a fixed file loads cleanly.
    """
    before = set(PLUGINS.names())
    try:
        yield
    except Exception as exc:
        sys.modules.pop(module_name, None)
        for name in set(PLUGINS.names()) - before:
            PLUGINS.unregister(name)
        if isinstance(exc, RegistryError):
            raise PluginLoadError(f"{what}: {exc}") from None
        raise PluginLoadError(f"{what} failed to import: {type(exc).__name__}: {exc}") from None


def _import_file(path: Path) -> None:
    module_name = f"autokd_user_plugins.{path.parent.name}.{path.stem}".replace("-", "_")
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with _loading(f"plugin file {path}", module_name):
        spec.loader.exec_module(module)


def load_builtin_plugins() -> None:
    """Import every module of the built-in ``plugins`` package (each registers its classes)."""
    import plugins

    for info in pkgutil.iter_modules(plugins.__path__):
        name = f"plugins.{info.name}"
        with _loading(f"plugin module {name} ({Path(info.module_finder.path) / info.name}.py)", name):
            importlib.import_module(name)


def load_entry_point_plugins() -> None:
    """Import the modules that installed packages declare in the ``autokd.plugins`` entry-point group."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        with _loading(f"plugin entry point '{ep.name}' ({ep.value})", ep.module):
            ep.load()


def load_plugin_paths(paths: Iterable[str | Path]) -> None:
    """Import plugin files, or every ``*.py`` file in plugin folders, named by a study file."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(path.glob("*.py")):
                if not file.name.startswith("_"):
                    _import_file(file.resolve())
        elif path.is_file():
            _import_file(path.resolve())
        else:
            raise PluginLoadError(f"plugin path {path} does not exist")


def load_plugins(paths: Iterable[str | Path] = ()) -> None:
    """Make every plugin available: built-ins, installed entry points, then the study's own paths."""
    load_builtin_plugins()
    load_entry_point_plugins()
    load_plugin_paths(paths)
