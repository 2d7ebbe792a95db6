"""Named variants: the one registry helper behind schedules, encodings, MLPs and predictors.

A ``Registry`` maps a name to a class or factory, filled by its ``register`` decorator where the
variant is defined (as transformers' ``ROPE_INIT_FUNCTIONS`` maps a rope type to one function).
Looking up an unknown name is a ``ValueError`` listing the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping of names to variants, with ``register`` and ``build``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, set_name: bool = False) -> Callable[[T], T]:
        """Decorator adding the decorated class or function under ``name`` (and, with
        ``set_name``, storing ``name`` on it as its ``name`` attribute)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            if set_name:
                entry.name = name
            return entry

        return add

    def get_entry(self, name: str) -> T:
        """The variant registered under ``name``; a ValueError naming the known ones otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}")
        return self._entries[name]

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call (instantiate) the variant ``name`` with the given arguments."""
        return self.get_entry(name)(*args, **kwargs)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
