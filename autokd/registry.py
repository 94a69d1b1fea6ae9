"""One registry mechanism for everything pluggable in autokd (datasets, student families, plugins).

A registry maps a user-facing name to an object registered with a decorator, in the style of
timm's ``@register_model``: the front door never grows an if/elif per member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A name was registered twice, or looked up without being registered."""


class Registry(Generic[T]):
    """Name → object table with a decorator for registration and helpful lookup errors."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, *, origin: str | None = None) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second registration of a name is an error."""

        def decorator(obj: T) -> T:
            where = origin or getattr(obj, "__module__", "?")
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(
                    f"{self.what} '{name}' is registered twice: by {self._origins[name]} and by {where}"
                )
            self._items[name] = obj
            self._origins[name] = where
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used to roll back a plugin file that failed half-way through importing)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise a one-line error listing the choices."""
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.what} '{name}'; available: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def origin(self, name: str) -> str:
        """Where ``name`` was registered from (module or file)."""
        return self._origins[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
