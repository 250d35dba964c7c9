"""Cached replies refreshed before they expire, as unbound's prefetch does.

A reply is kept with two times: when it expires, and when a hit should refresh it (the last
``[server] prefetch`` fraction of its life; with prefetch off, or for a reply that is not
to be refreshed, the two are the same). The hot path compares the second one only
(:meth:`policyd.server.reply_cache.ReplyCache.cached`): an ordinary hit costs nothing more.
A hit past it, before the expiry, starts one refresh of that request payload here and is
answered from memory meanwhile. The refresh asks the service for an answer from fresh
evidence; :class:`~policyd.server.reply_cache.ReplyCache` keeps it in place of the old one
through the same path as a miss. A refresh that fails does not extend the old reply: it
expires when it would have, and the slow path takes over then.

This module holds the bound and the bookkeeping: one refresh per payload (a
:class:`~policyd.singleflight.SingleFlight`), at most :data:`MAX_REFRESHES` at once, and the
counters (in the service's :class:`~policyd.service.Stats`, beside the hits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

from policyd.core.seconds import Seconds
from policyd.service import Stats
from policyd.singleflight import SingleFlight

# Refreshes in flight at once; a hit due for a refresh beyond it starts none (counted as
# skipped; a later hit tries again). Each is one destination's gathering, a few queries to a
# local resolver (milliseconds): 64 at once refresh thousands of destinations a second, and
# a slow resolver cannot make refreshes pile up.
MAX_REFRESHES: Final = 64
# A refresh that did not renew the reply (the resolver answered from its own cache, its
# records counting down, before its own prefetch renewed them) is tried again by a hit
# after this share of the reply's remaining life, and at least RETRY_AFTER seconds later:
# a few tries within the last fraction of its life, whatever its TTL.
RETRY_SHARE: Final = 0.25
RETRY_AFTER: Final = 1.0


class Prefetch:
    """When a cached reply is due for a refresh, and the refreshes under way."""

    __slots__ = ("_due_second", "_flights", "_stats", "fraction")

    def __init__(self, fraction: float, stats: Stats) -> None:
        if not (math.isfinite(fraction) and 0 <= fraction < 1):
            raise ValueError("prefetch must be at least 0 and less than 1")
        self.fraction = fraction
        self._stats = stats
        self._flights: SingleFlight[bytes, None] = SingleFlight()
        # Refresh times down to the second, one float object for all within that second.
        self._due_second = Seconds()

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, payload: object) -> bool:
        """A refresh of ``payload``'s reply is under way."""
        return payload in self._flights

    def due(self, until: float, ttl: float, refreshable: bool) -> float:
        """When a reply kept ``until`` (whole seconds), holding ``ttl`` seconds, should be
        refreshed by a hit: the start of the last ``fraction`` of its life, whole seconds
        (``until`` itself when not ``refreshable`` or prefetch is off)."""
        if not (self.fraction and refreshable):
            return until
        return min(until, self._due_second(until - ttl * self.fraction))

    def retry(self, now: float, until: float) -> float:
        """When a hit tries again to refresh a reply kept ``until`` whose refresh did not
        renew it."""
        return min(until, now + max(RETRY_AFTER, (until - now) * RETRY_SHARE))

    def start(self, payload: bytes, refresh: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Refresh ``payload``'s reply unless that is under way or the limit is reached."""
        flights = self._flights
        if payload in flights:
            return
        if len(flights) >= MAX_REFRESHES:
            self._stats.prefetch_skipped += 1
            return
        self._stats.prefetched += 1
        flights.task(payload, refresh)

    def failed(self) -> None:
        self._stats.prefetch_failed += 1

    def cancel_all(self) -> None:
        """Stop every refresh under way (shutdown)."""
        self._flights.cancel_all()
