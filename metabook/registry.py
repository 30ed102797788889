"""Named entries of one kind (learners, backbones, corpora, scales, optimizers), in one place.

Each kind has one :class:`Registry`. The config checks its values against it,
the command line lists it, and tables print its display names, so adding an
entry is one :meth:`Registry.register` call::

    >>> colours = Registry("colour")
    >>> _ = colours.register("red", (255, 0, 0), display="Red")
    >>> colours["red"], colours.display("red"), colours.names()
    ((255, 0, 0), 'Red', ['red'])
    >>> colours["rde"]
    Traceback (most recent call last):
    ...
    metabook.errors.ConfigError: unknown colour 'rde' (did you mean 'red'?); known colours: red
"""
from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from metabook.errors import ConfigError, MetabookError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name, in the order they were registered.

    An unknown name raises ``error`` (a :class:`~metabook.errors.MetabookError`,
    :class:`~metabook.errors.ConfigError` by default) that names the close
    matches and every known name; ``plural`` and ``option`` (the config key or
    parameter that picks an entry) go into that message.
    """

    def __init__(self, kind: str, plural: str | None = None, option: str | None = None,
                 error: type[MetabookError] = ConfigError):
        self.kind, self.plural, self.error = kind, plural or f"{kind}s", error
        self.option = option or kind
        self._entries: dict[str, T] = {}
        self._display: dict[str, str] = {}

    def register(self, name: str, entry: T, display: str | None = None) -> T:
        """Add ``entry`` under the new ``name`` (shown as ``display`` in tables); returns it."""
        if name in self._entries:
            raise self.error(f"a {self.kind} named {name!r} is already registered; choose "
                             f"another name", options=(self.option,))
        self._entries[name] = entry
        self._display[name] = display or name
        return entry

    def remove(self, name: str) -> T:
        """Take ``name`` out of the registry (for example a test's temporary entry); returns it."""
        entry = self[name]
        del self._entries[name], self._display[name]
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def unknown(self, name: object) -> MetabookError:
        """The error for a name that is not registered."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return self.error(f"unknown {self.kind} {name!r}{hint}; known {self.plural}: "
                          f"{', '.join(self._entries)}", options=(self.option,))

    def display(self, name: str) -> str:
        """How ``name`` is shown in tables and messages."""
        self[name]
        return self._display[name]

    def names(self) -> list[str]:
        """Every registered name, in the order of registration."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
