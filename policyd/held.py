"""What memory holds per destination, and the bound on it: one table for two holders.

The service keeps each destination's latest verdicts, the reply cache its encoded replies.
Both are bounded together by ``[server] max_destinations`` through one table of destination
keys in least-recently-used-first order (a dict: insertion order, O(1) to refresh, to add and
to find the oldest), so that a destination's verdicts and replies are forgotten together and
a cache hit keeps the verdicts behind it as well as a decision does. Each entry holds what
the reply cache keeps for the destination (the request payloads it answered), so that the
hot path refreshes the order and finds nothing else to update.

Also the two tricks that keep a held destination small: equal values shared
(:func:`shared`), and times down to the second as one float object
(:class:`policyd.core.seconds.Seconds`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

# Distinct verdicts and encoded replies shared between destinations (most destinations get
# one of a few: NOTFOUND for want of evidence, ...); beyond it new ones are not shared.
MAX_SHARED: Final = 4096

# The request payloads the reply cache holds for one destination: one payload as itself,
# not in a tuple (the usual case, kept small); () for none.
Payloads = bytes | tuple[bytes, ...]


def payloads_of(held: Payloads) -> tuple[bytes, ...]:
    return (held,) if isinstance(held, bytes) else held


class HeldDestinations:
    """Destination keys in least-recently-used-first order, at most ``limit`` of them.

    ``order`` is public for the hot path (a cache hit moves its key to the end: one pop and
    one insert). Whoever forgets a destination at the bound is told first (``on_evict``),
    while its payloads are still here."""

    __slots__ = ("evicted", "limit", "on_evict", "order")

    def __init__(self, limit: int, on_evict: Callable[[str], None]) -> None:
        if limit < 1:
            raise ValueError("max_destinations must be at least 1")
        self.limit = limit
        self.order: dict[str, Payloads] = {}
        self.on_evict = on_evict
        self.evicted = 0  # destinations forgotten at the bound, since start

    def __len__(self) -> int:
        return len(self.order)

    def touch(self, key: str) -> Payloads:
        """Make ``key`` the most recently used (adding it if new, and then forgetting the
        least recently used beyond the limit); its payloads."""
        order = self.order
        held = order.pop(key, ())
        order[key] = held
        while len(order) > self.limit:
            oldest = next(iter(order))
            self.on_evict(oldest)
            order.pop(oldest, None)
            self.evicted += 1
        return held


_T = TypeVar("_T")


def shared(table: dict[_T, _T], value: _T) -> _T:
    """One copy of equal values for many destinations, up to MAX_SHARED of them."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) < MAX_SHARED:
        table[value] = value
    return value
