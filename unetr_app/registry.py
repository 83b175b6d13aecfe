"""One registry for everything chosen by name (models, decoders, recipes, optimizers, schedules,
losses), so a config names a part as data and an unknown name fails with one wording everywhere:

    MODELS = Registry("model", list_command="unetr models list")

    @MODELS.register("unetr")          # or MODELS.register("unetr", builder); a duplicate name is an error
    def unetr(**kwargs): ...

    MODELS.get("unetrr")  # UnknownNameError: unknown model 'unetrr'; did you mean 'unetr'? see `unetr models list`

This is the bottom layer: it imports only the error classes.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterable, TypeVar

from unetr_app.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name no registry entry has; the message names the closest one (a ConfigError, so one CLI line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name`, or None when nothing is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def unknown_name_message(kind: str, name: str, known: Iterable[str], list_command: str | None = None) -> str:
    """The one wording for an unknown name: the value, the closest known name, where to see them all
    (`known` in the order to show)."""
    known = list(known)
    close = closest_name(name, known)
    hint = f"did you mean {close!r}? " if close else ""
    where = f"see `{list_command}`" if list_command else f"choose one of {', '.join(known)}"
    return f"unknown {kind} {name!r}; {hint}{where}"


class Registry(Generic[T]):
    """Named entries of one kind. `loader`, when given, runs once before the first lookup to import
    the modules that register entries (so a lookup never depends on what happened to be imported)."""

    def __init__(self, kind: str, *, list_command: str | None = None, loader: Callable[[], None] | None = None):
        self.kind = kind
        self.list_command = list_command
        self._loader = loader
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """`register(name, entry)` adds an entry; `@register(name)` adds the decorated object."""
        if entry is not None:
            return self._add(name, entry)
        return lambda obj: self._add(name, obj)

    def _add(self, name: str, entry: T) -> T:
        if name in self._entries:
            owner = getattr(self._entries[name], "__module__", "an earlier registration")
            raise ValueError(f"{self.kind} name {name!r} is already registered by {owner}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, sorted(self._entries), self.list_command))
        return self._entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, sorted."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader()
