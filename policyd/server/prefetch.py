"""Cached replies refreshed before they expire, as unbound's prefetch does, for every reply
in use.

A reply is kept with two times: when it expires, and when it should be refreshed (the last
``[server] prefetch`` fraction of its life; with prefetch off, or for a reply that is not
to be refreshed, the two are the same). A reply is in use once a lookup has hit it since it
was cached: the first hit marks it (the hot path sends it off the fast branch once, by a
negative refresh time, see :meth:`policyd.server.reply_cache.ReplyCache.cached`). When its
refresh time comes, the reply cache's clock tick starts the refresh of every reply in use
whose time it is (spread over the tick's 10 ms steps), whether or not another lookup comes
then; a hit past that time starts it too. Unbound refreshes only what a lookup hits in
that last fraction, which leaves a destination asked a few times a minute to expire between
lookups and wait on the slow path (bench/prefetch.py at 5,000 lookups/s: 98.5% answered
from memory that way). A reply no lookup hit during its life is not refreshed: it expires,
and the next lookup gathers anew; unless it is itself a refresh of a reply that was hit (on
probation): a destination asked a few times a TTL sees no lookup in some of its lives (at 3
lookups a TTL, 5% of them), and its next lookup would wait on the slow path. So a reply is
refreshed if hit in its life or the one before, and a destination no longer asked costs one
refresh more. The refresh asks the service for an answer from fresh evidence;
:class:`~policyd.server.reply_cache.ReplyCache` keeps it in place of the old one through
the same path as a miss. A refresh that fails does not extend the old reply: it expires
when it would have, and the slow path takes over then.

This module holds the bound and the bookkeeping: one refresh per payload (a
:class:`~policyd.singleflight.SingleFlight`), at most :data:`MAX_REFRESHES` at once (the
others wait for one to end), and the counters (in the service's
:class:`~policyd.service.Stats`, beside the hits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

from policyd.core.seconds import Seconds
from policyd.service import Stats
from policyd.singleflight import SingleFlight

# Refreshes in flight at once; one due beyond it waits (counted as skipped) and starts as
# soon as one ends. Each is one destination's gathering, a few queries to a local resolver
# (milliseconds): 8 at once refresh a thousand or more destinations a second, a slow
# resolver cannot make refreshes pile up, and the event-loop steps of at most 8 gatherings
# run between two hits. (bench/prefetch.py paced at 5,000/s: 64 at once with all due in a
# second started together, p99 23 ms; 8 at once spread over ticks, 8.8 ms; 2, 7.7 ms; 8 at
# once spread over ticks and each tick's over its 10 ms steps, about 1 ms, seldom 8 at once.)
MAX_REFRESHES: Final = 8
# A refresh that did not renew the reply (the resolver answered from its own cache, its
# records counting down, before its own prefetch renewed them) is tried again (by the
# sweep, or a hit) after this share of the reply's remaining life, and at least
# RETRY_AFTER seconds later: a few tries within the last fraction of its life, whatever
# its TTL.
RETRY_SHARE: Final = 0.25
RETRY_AFTER: Final = 1.0


class Prefetch:
    """When a cached reply is due for a refresh, and the refreshes under way."""

    __slots__ = ("_due_second", "_flights", "_resume", "_stats", "_waiting", "fraction")

    def __init__(self, fraction: float, stats: Stats, resume: Callable[[bytes], object]) -> None:
        if not (math.isfinite(fraction) and 0 <= fraction < 1):
            raise ValueError("prefetch must be at least 0 and less than 1")
        self.fraction = fraction
        self._stats = stats
        self._flights: SingleFlight[bytes, None] = SingleFlight()
        # Payloads due for a refresh while MAX_REFRESHES ran, oldest first (each once: at
        # most one per cached reply). As each refresh ends, the next is handed to
        # ``resume``, which starts it if its reply is still there and due.
        self._waiting: dict[bytes, None] = {}
        self._resume = resume
        # Refresh times down to the second, one float object for all within that second.
        self._due_second = Seconds()

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, payload: object) -> bool:
        """A refresh of ``payload``'s reply is under way."""
        return payload in self._flights

    def due(self, until: float, ttl: float, refreshable: bool) -> float:
        """When a reply kept ``until`` (whole seconds), holding ``ttl`` seconds, should be
        refreshed (if in use): the start of the last ``fraction`` of its life, whole seconds
        (``until`` itself when not ``refreshable`` or prefetch is off)."""
        if not (self.fraction and refreshable):
            return until
        return min(until, self._due_second(until - ttl * self.fraction))

    def retry(self, now: float, until: float) -> float:
        """When the sweep (or a hit) tries again to refresh a reply kept ``until`` whose
        refresh did not renew it."""
        return min(until, now + max(RETRY_AFTER, (until - now) * RETRY_SHARE))

    def start(self, payload: bytes, refresh: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Refresh ``payload``'s reply unless that is under way; at the limit, it waits
        for a refresh to end (counted as skipped)."""
        flights = self._flights
        if payload in flights:
            return
        if len(flights) >= MAX_REFRESHES:
            if payload not in self._waiting:
                self._stats.prefetch_skipped += 1
                self._waiting[payload] = None
            return
        self._stats.prefetched += 1
        flights.task(payload, refresh).add_done_callback(self._room)

    def _room(self, _ended: object) -> None:
        """A refresh ended: the waiting ones' turn, oldest first."""
        waiting = self._waiting
        while waiting and len(self._flights) < MAX_REFRESHES:
            payload = next(iter(waiting))
            del waiting[payload]
            self._resume(payload)

    def failed(self) -> None:
        self._stats.prefetch_failed += 1

    def cancel_all(self) -> None:
        """Stop every refresh under way (shutdown)."""
        self._waiting.clear()
        self._flights.cancel_all()
