"""Overrides: a parent-form override reaches subdomains at any depth (review D14), as in
Postfix's table walk, the most specific first; bracketed and ``:port`` keys only their own."""

from __future__ import annotations

from policyd.codec.postfix_policy import parse
from policyd.core.evidence import Override
from policyd.overrides import Overrides, parent_walk, under_parent
from tests.fakes import MemoryStore

NOW = 1_800_000_000.0


def test_parent_walk_is_postfix_order() -> None:
    assert parent_walk("a.b.example.com") == (
        "a.b.example.com",
        ".b.example.com",
        ".example.com",
        ".com",
    )
    assert parent_walk(".example.com") == (".example.com", ".com")
    assert parent_walk("[mx.example.com]") == ("[mx.example.com]",)
    assert parent_walk("example.com:587") == ("example.com:587",)
    assert parent_walk("[192.0.2.1]") == ("[192.0.2.1]",)


def test_under_parent() -> None:
    assert under_parent("sub.example.com", ".example.com")
    assert under_parent("a.sub.example.com", ".example.com")
    assert under_parent(".sub.example.com", ".example.com")
    assert not under_parent("example.com", ".example.com")
    assert not under_parent(".example.com", ".example.com")
    assert not under_parent("badexample.com", ".example.com")
    assert not under_parent("[mx.example.com]", ".example.com")
    assert not under_parent("sub.example.com:587", ".example.com")


async def test_active_walks_parents_most_specific_first() -> None:
    book = Overrides(MemoryStore())
    top = Override(".example.com", parse("encrypt"))
    mid = Override(".sub.example.com", parse("verify"))
    exact = Override("host.sub.example.com", parse("may"))
    await book.put(top)
    assert book.active("a.b.example.com", NOW) is top
    assert book.active("example.com", NOW) is None  # not under its own parent form
    assert book.active("[mx.example.com]", NOW) is None
    assert book.active("mx.example.com:587", NOW) is None
    await book.put(mid)
    assert book.active("a.sub.example.com", NOW) is mid
    assert book.active("other.example.com", NOW) is top
    await book.put(exact)
    assert book.active("host.sub.example.com", NOW) is exact


async def test_an_expired_exact_override_lets_the_parent_through() -> None:
    book = Overrides(MemoryStore())
    top = Override(".example.com", parse("encrypt"))
    await book.put(top)
    await book.put(Override("sub.example.com", parse("may"), expires_at=NOW + 10))
    assert book.active("sub.example.com", NOW) is not top
    assert book.active("sub.example.com", NOW + 10) is top
