"""quick_init: the same instances as the dataclass's own __init__ builds, still frozen."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from policyd.core.event import Event
from policyd.core.frozen import quick_init
from policyd.core.types import Outcome, Rule, Verdict


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: float = field(default=1.5, kw_only=True)

    def __post_init__(self) -> None:
        if self.a < 0:
            object.__setattr__(self, "a", 0)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick(Plain):
    """Plain's fields and __post_init__, built by quick_init's __init__."""


@quick_init
@dataclass(frozen=True, slots=True)
class Child(Quick):
    e: int = 5


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((2, "x"), {}), ((3, "y", [4]), {"d": 2.5}), ((-1,), {"c": [1]})],
)
def test_builds_what_the_dataclass_builds(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)  # type: ignore[arg-type]
    assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
    assert repr(quick) == repr(plain).replace("Plain", "Quick")
    assert quick == Quick(*args, **kwargs)  # type: ignore[arg-type]


def test_quick_sets_fields_through_the_slot_descriptors() -> None:
    assert "_set_a" in Quick.__init__.__globals__  # quick_init's __init__, not the dataclass's
    assert "_set_a" not in Plain.__init__.__globals__


def test_factories_are_called_per_instance() -> None:
    assert Quick(1).c is not Quick(1).c


def test_still_frozen_and_checked() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quick(1).a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Quick(1, "b", [], 2.0)  # type: ignore[call-arg]  # d is keyword-only
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]


def test_inherited_slots() -> None:
    child = Child(1, e=7)
    assert (child.a, child.b, child.c, child.d, child.e) == (1, "b", [], 1.5, 7)


def test_the_classes_on_the_cold_path_keep_their_checks() -> None:
    assert Verdict.__init__.__qualname__ == "Verdict.__init__"
    assert hash(Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "r")) == hash(
        Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "r")
    )
    assert Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "a\nb").reason == "a\\nb"  # __post_init__
    with pytest.raises(ValueError, match="finite"):
        Event(float("nan"), "k", "postfix", Rule.DEFAULT, "NOTFOUND", "r")


def test_refuses_what_it_cannot_build() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    with pytest.raises(TypeError, match="frozen"):
        quick_init(Mutable)

    @dataclass(frozen=True, slots=True)
    class Hidden:
        a: int
        b: int = field(default=0, init=False)

    with pytest.raises(TypeError, match="outside __init__"):
        quick_init(Hidden)
