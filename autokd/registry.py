"""One registry mechanism for every kind of extension: methods, student families, datasets, INT8 backends.

A registry maps a user-facing name to an object registered with a decorator, in the style of timm's
``@register_model``. Adding an extension is one step: a decorated object in one file. The built-in
members are the modules of one package, imported the first time the registry is asked anything, so no
``__init__`` lists them; installed packages add theirs through an entry point (see
:data:`ENTRY_POINT_GROUPS`), and a study's ``extensions:`` files through :func:`load_extension_files`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

# An installed package registers its extensions by naming a module in one of these groups; the module
# is imported before any registry answers. "autokd.plugins" is the 0.1 name, kept for one release.
ENTRY_POINT_GROUPS = ("autokd.extensions", "autokd.methods", "autokd.plugins")
USER_MODULE_PREFIX = "autokd_user_extensions"


class RegistryError(ValueError):
    """A name was registered twice, or looked up without being registered."""


class ExtensionLoadError(RuntimeError):
    """An extension file, module or entry point failed to import, or clashed with another's name."""


_registries: list[Registry] = []
_entry_points_loaded = False


class Registry(Generic[T]):
    """Name → object table with a decorator for registration and one-line lookup errors.

    ``builtins`` names the package whose every module is imported on first use (each registers its
    members with the decorator).
    """

    def __init__(self, what: str, builtins: str | None = None) -> None:
        self.what = what
        self.builtins = builtins
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._loaded = builtins is None
        _registries.append(self)

    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does it.

        A second registration of a name by another object is an error.
        """

        def add(item: T) -> T:
            where = origin or _origin_of(item)
            if name in self._items and self._items[name] is not item:
                raise RegistryError(
                    f"{self.what} '{name}' is registered twice: by {self._origins[name]} and by {where}"
                )
            self._items[name] = item
            self._origins[name] = where
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used to roll back an extension file that failed half-way through importing)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def load(self) -> None:
        """Import the built-in package's modules and the installed entry points, once."""
        if not self._loaded:
            self._loaded = True  # first: a built-in module may look itself up while it registers
            import_package_modules(self.builtins)
        load_entry_points()

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise a one-line error listing the choices."""
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.what} '{name}'; available: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def origin(self, name: str) -> str:
        """Where ``name`` was registered from (a module's file)."""
        self.load()
        return self._origins[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        self.load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs, sorted by name."""
        return [(name, self._items[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> tuple[dict, dict]:
        """The registry's contents, for :meth:`restore` (tests that register throw-away members)."""
        self.load()
        return dict(self._items), dict(self._origins)

    def restore(self, snapshot: tuple[dict, dict]) -> None:
        """Put back the contents a :meth:`snapshot` took."""
        self._items, self._origins = dict(snapshot[0]), dict(snapshot[1])


def _origin_of(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return getattr(sys.modules.get(module), "__file__", None) or module


@contextlib.contextmanager
def _loading(what: str, module_name: str) -> Iterator[None]:
    """Turn any import failure of an extension module into one ExtensionLoadError naming ``what``.

    Whatever the half-imported module registered is rolled back, so that a fixed file loads cleanly.
    """
    before = [(registry, set(registry._items)) for registry in _registries]
    try:
        yield
    except Exception as exc:
        sys.modules.pop(module_name, None)
        for registry, names in before:
            for name in set(registry._items) - names:
                registry.unregister(name)
        if isinstance(exc, RegistryError):
            raise ExtensionLoadError(f"{what}: {exc}") from None
        raise ExtensionLoadError(f"{what} failed to import: {type(exc).__name__}: {exc}") from None


def import_package_modules(package_name: str) -> None:
    """Import every module of ``package_name`` whose name does not start with ``_``."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        name = f"{package_name}.{info.name}"
        if name in sys.modules:
            continue
        where = Path(getattr(info.module_finder, "path", "?")) / f"{info.name}.py"
        with _loading(f"module {name} ({where})", name):
            importlib.import_module(name)


def load_entry_points() -> None:
    """Import the modules installed packages declare in :data:`ENTRY_POINT_GROUPS`, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            if ep.module in sys.modules:
                continue
            with _loading(f"entry point '{ep.name}' ({ep.value}, group {group})", ep.module):
                ep.load()


def _module_name(path: Path) -> str:
    return f"{USER_MODULE_PREFIX}.{path.parent.name}.{path.stem}".replace("-", "_")


def _import_file(path: Path) -> None:
    module_name = _module_name(path)
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ExtensionLoadError(f"extension file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with _loading(f"extension file {path}", module_name):
        spec.loader.exec_module(module)


def load_callable(spec: str, field: str, error: type[Exception] = ExtensionLoadError):
    """The function ``spec`` names: ``module:function`` (an importable module) or
    ``path/to/file.py:function`` (a file, imported once like an extension file). It is code: importing
    it runs whatever it contains. Problems raise ``error`` with one line naming ``field``."""
    target, _, function = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise error(f"field '{field}' = {spec!r}: no such file {target}")
        try:
            _import_file(path.resolve())
        except ExtensionLoadError as exc:
            raise error(f"field '{field}' = {spec!r}: {exc}") from None
        module = sys.modules[_module_name(path.resolve())]
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise error(f"field '{field}' = {spec!r}: cannot import {target} ({exc})") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise error(f"field '{field}' = {spec!r}: {target} has no function {function!r}")
    return found


def load_extension_files(paths: Iterable[str | Path]) -> None:
    """Import extension files, or every ``*.py`` file in extension folders, that a study names.

    These files are code: importing them runs whatever they contain.
    """
    for registry in _registries:
        registry.load()  # built-ins first, so a user's clash is reported against them
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(path.glob("*.py")):
                if not file.name.startswith("_"):
                    _import_file(file.resolve())
        elif path.is_file():
            if path.suffix != ".py":
                raise ExtensionLoadError(f"extension path {path} is neither a .py file nor a folder")
            _import_file(path.resolve())
        else:
            raise ExtensionLoadError(f"extension path {path} does not exist")


def registries() -> list[Registry]:
    """Every registry, in creation order."""
    return list(_registries)
