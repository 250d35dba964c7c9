"""The wire schema of control results: each field is declared once, with its JSON key.

A result is a class deriving from :class:`WireDoc`, decorated with :func:`wire_doc` (a
frozen slotted dataclass), whose attributes say their key and :class:`Kind` where they are
declared: ``max_age: int = wire("max_age", INT)``. The attributes' order is the keys' order
on the wire; ``WHAT`` names the document in errors and ``CONSTANTS`` are keys always
``true`` ("queued", "deleted"). One encoder (:meth:`WireDoc.to_json`) and one decoder
(:meth:`WireDoc.from_json`) walk the resulting ``WIRE``. Reading is strict on known fields
and tolerant of others: unknown fields are ignored, so a newer daemon may add some; a
missing or mistyped known field is a
:class:`~policyd.codec.control.framing.ControlProtocolError` naming it, so a version skew
between ``policyctl`` and the daemon is an explicit error, never a blank.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Self, TypeVar, cast, dataclass_transform

from policyd.codec.control.framing import ControlProtocolError, JsonObject, JsonValue

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")
D = TypeVar("D", bound="WireDoc")


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """How one field's value goes to JSON and back; ``decode`` names the field by ``where``."""

    encode: Callable[[T], JsonValue]
    decode: Callable[[str, JsonValue], T]

    def get(self, what: str, doc: Mapping[str, JsonValue], name: str) -> T:
        if name not in doc:
            raise ControlProtocolError(f"{what}: no {name!r}")
        return self.decode(f"{what}: {name!r}", doc[name])


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a result document, made by :func:`wire_doc` from a ``wire`` attribute."""

    wire: str  # the JSON key
    kind: Kind[Any]
    attr: str | None  # None: a constant ``true`` on the wire, checked, not kept


def _bad(where: str, kind: str) -> ControlProtocolError:
    return ControlProtocolError(f"{where} is not {kind}")


def _scalar(kind: str, ok: Callable[[JsonValue], bool]) -> Kind[Any]:
    def decode(where: str, value: JsonValue) -> Any:
        if not ok(value):
            raise _bad(where, kind)
        return value

    return Kind(lambda v: v, decode)


def _not_bool(value: JsonValue) -> bool:
    return not isinstance(value, bool)


TEXT: Kind[str] = _scalar("a string", lambda v: isinstance(v, str))
INT: Kind[int] = _scalar("an integer", lambda v: _not_bool(v) and isinstance(v, int))
NUMBER: Kind[float] = _scalar("a number", lambda v: _not_bool(v) and isinstance(v, int | float))
FLAG: Kind[bool] = _scalar("true or false", lambda v: isinstance(v, bool))
TRUE: Kind[bool] = Kind(lambda _v: True, FLAG.decode)  # a constant key


def optional(kind: Kind[T]) -> Kind[T | None]:
    """``null`` for None."""
    return Kind(
        lambda v: None if v is None else kind.encode(v),
        lambda where, v: None if v is None else kind.decode(where, v),
    )


def list_of(kind: Kind[T]) -> Kind[tuple[T, ...]]:
    """A tuple, as a JSON list."""

    def decode(where: str, value: JsonValue) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _bad(where, "a list")
        return tuple(kind.decode(f"{where}[{i}]", v) for i, v in enumerate(value))

    return Kind(lambda v: [kind.encode(x) for x in v], decode)


def table_of(kind: Kind[T]) -> Kind[Mapping[str, T]]:
    """Named entries (profile -> ..., level -> ...), as a JSON object."""

    def decode(where: str, value: JsonValue) -> Mapping[str, T]:
        if not isinstance(value, dict):
            raise _bad(where, "a JSON object")
        return {key: kind.decode(f"{where}[{key!r}]", v) for key, v in value.items()}

    return Kind(lambda v: {key: kind.encode(x) for key, x in v.items()}, decode)


def enum_of(kind: type[E]) -> Kind[E]:
    """An enum member, as its value."""

    def decode(where: str, value: JsonValue) -> E:
        try:
            return kind(value)
        except ValueError:
            raise _bad(where, f"a known {kind.__name__}") from None

    return Kind(lambda v: v.value, decode)


def nested(cls: type[D]) -> Kind[D]:
    """Another result document (it names itself in errors)."""
    return Kind(lambda v: v.to_json(), lambda _where, v: cls.from_json(v))


TEXTS = list_of(TEXT)


def as_object(what: str, value: JsonValue) -> JsonObject:
    if not isinstance(value, dict):
        raise ControlProtocolError(f"{what}: not a JSON object")
    return value


def read(what: str, wire: tuple[Field, ...], value: JsonValue) -> dict[str, Any]:
    """The attributes of ``wire`` from the document ``value``, by attribute name."""
    doc = as_object(what, value)
    found = {f.attr: f.kind.get(what, doc, f.wire) for f in wire}
    return {attr: v for attr, v in found.items() if attr is not None}


_SPEC = "policyd.wire"  # the dataclass field metadata key of a wire field's (key, kind)


def wire(key: str, kind: Kind[T]) -> T:
    """Declares a result attribute with its JSON key and kind: ``x: int = wire("x", INT)``."""
    return cast(T, field(metadata={_SPEC: (key, kind)}))


class WireDoc:
    """Base of a result document: ``to_json`` and ``from_json`` by its ``WIRE`` schema."""

    __slots__ = ()

    WHAT: ClassVar[str]  # its name in errors
    CONSTANTS: ClassVar[tuple[str, ...]] = ()  # keys always ``true``, after the fields
    WIRE: ClassVar[tuple[Field, ...]]  # its fields in wire order, made by @wire_doc

    def to_json(self) -> JsonObject:
        return {
            f.wire: f.kind.encode(None if f.attr is None else getattr(self, f.attr))
            for f in self.WIRE
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        make: Callable[..., Self] = cls
        return make(**read(cls.WHAT, cls.WIRE, value))


@dataclass_transform(frozen_default=True, field_specifiers=(wire,))
def wire_doc(cls: type[D]) -> type[D]:
    """A frozen slotted dataclass whose ``wire`` attributes, in order, are its ``WIRE``."""
    made = dataclass(frozen=True, slots=True)(cls)
    specs = ((f.metadata[_SPEC], f.name) for f in fields(cast(Any, made)) if _SPEC in f.metadata)
    made.WIRE = tuple(Field(key, kind, attr) for (key, kind), attr in specs) + tuple(
        Field(key, TRUE, None) for key in made.CONSTANTS
    )
    return made
