"""Name -> class registries, so adding a stage or backend is adding a file and one decorator.

Built-in entries are declared once, as ``"module:attribute"`` paths, and imported on first use: a fresh
process that only reads an output folder (``fusion card``) resolves every stage it names without
importing every model library up front.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtins = dict(builtins or {})

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._builtins:
            self._import_builtin(name)
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def _import_builtin(self, name: str) -> None:
        module, _, attribute = self._builtins[name].partition(":")
        entry = getattr(importlib.import_module(module), attribute)
        self._entries.setdefault(name, entry)

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._builtins))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._builtins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
