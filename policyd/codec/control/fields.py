"""Strict reading of a result document: every known field must be there with its type.

Unknown fields are ignored, so a newer daemon may add some; a missing or mistyped known
field is a :class:`~policyd.codec.control.framing.ControlProtocolError` naming it, so a
version skew between ``policyctl`` and the daemon is an explicit error, never a blank.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

from policyd.codec.control.framing import ControlProtocolError, JsonValue

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


class Fields:
    __slots__ = ("_d", "_what")

    def __init__(self, what: str, value: JsonValue) -> None:
        if not isinstance(value, dict):
            raise ControlProtocolError(f"{what}: not a JSON object")
        self._what = what
        self._d: Mapping[str, JsonValue] = value

    def _get(self, name: str) -> JsonValue:
        if name not in self._d:
            raise ControlProtocolError(f"{self._what}: no {name!r}")
        return self._d[name]

    def _bad(self, name: str, kind: str) -> ControlProtocolError:
        return ControlProtocolError(f"{self._what}: {name!r} is not {kind}")

    def has(self, name: str) -> bool:
        return name in self._d

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        return None if self._get(name) is None else self.text(name)

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def opt_integer(self, name: str) -> int | None:
        return None if self._get(name) is None else self.integer(name)

    def number(self, name: str) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number")
        return value

    def opt_number(self, name: str) -> float | None:
        return None if self._get(name) is None else self.number(name)

    def flag(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, "a list of strings")
        return tuple(str(v) for v in value)

    def enum(self, name: str, kind: type[E]) -> E:
        value = self._get(name)
        try:
            return kind(value)
        except ValueError:
            raise self._bad(name, f"a known {kind.__name__}") from None

    def opt_enum(self, name: str, kind: type[E]) -> E | None:
        return None if self._get(name) is None else self.enum(name, kind)

    def obj(self, name: str, read: Callable[[JsonValue], T]) -> T:
        return read(self._get(name))

    def opt_obj(self, name: str, read: Callable[[JsonValue], T]) -> T | None:
        value = self._get(name)
        return None if value is None else read(value)

    def objs(self, name: str, read: Callable[[JsonValue], T]) -> tuple[T, ...]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self._bad(name, "a list")
        return tuple(read(v) for v in value)

    def table(self, name: str, read: Callable[[str, JsonValue], T]) -> dict[str, T]:
        """A JSON object of named entries (profile -> ..., level -> ...)."""
        value = self._get(name)
        if not isinstance(value, dict):
            raise self._bad(name, "a JSON object")
        return {key: read(f"{self._what}.{name}.{key}", v) for key, v in value.items()}


def read_texts(what: str, value: JsonValue) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlProtocolError(f"{what}: not a list of strings")
    return tuple(str(v) for v in value)


def read_count(what: str, value: JsonValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlProtocolError(f"{what}: not an integer")
    return value
