"""A small generic registry (timm's ``@register_model`` pattern) plus entry-point plugins.

Every pluggable kind in kdtune (datasets, models, methods) is a ``Registry``. Code never
branches on a name: it asks the registry. Third-party packages add entries through the entry
point groups ``kdtune.datasets``, ``kdtune.models`` and ``kdtune.methods``; each entry point
names a module (or object) whose import registers its entries.
"""

from __future__ import annotations

import difflib
import re
import warnings
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists close matches and all names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Name → object. ``register`` warns when a name is overwritten (plugins may shadow)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``reg.register("x", obj)`` or as a decorator ``@reg.register("x")``."""

        if not _NAME.match(name) or ".." in name:
            # names become trial folders, run names and artifact paths: no separators, no `..`
            raise ValueError(f"{self.kind} name {name!r}: use letters, digits, '_', '-', '.' "
                             "(starting with a letter or digit)")

        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                warnings.warn(f"{self.kind} {name!r} is registered again; the new one wins",
                              stacklevel=3)
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self._group):
            try:
                ep.load()  # importing the plugin registers its entries
            except Exception as e:  # a broken plugin must not break kdtune itself
                warnings.warn(f"plugin {ep.name!r} ({ep.value}) for {self._group} failed: {e}")

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}: {hint}choose one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


DATASETS: Registry = Registry("dataset", "kdtune.datasets")
MODELS: Registry = Registry("model", "kdtune.models")
METHODS: Registry = Registry("method", "kdtune.methods")
