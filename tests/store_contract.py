"""What every store backend must do alike, run by each backend's tests (SQLite, Redis)."""

from __future__ import annotations

from policyd.adapters.store import Store
from tests.fakes import event


async def check_events_in_append_order(store: Store) -> None:
    """Events come back in append order, not by time (hosts' clocks differ); ``since``
    keeps those at or after it."""
    first = event(30.0, "a.example", "first")
    second = event(10.0, "b.example", "second")
    third = event(20.5, "c.example", "third: ünïcode, spaces ")
    for e in (first, second, third):
        await store.append_event(e)
    assert await store.events(0.0) == [first, second, third]
    assert await store.events(20.5) == [first, third]
    assert await store.events(31.0) == []
