"""DNS lookups with the DNSSEC outcome of each answer.

The daemon trusts the AD bit of a validating resolver on this host (RFC 6698 4.1,
RFC 7672 2.1.1). Every lookup ends in one of three states that are never confused:
SECURE (AD set), INSECURE (completed, AD clear) and FAILED (SERVFAIL, bogus, REFUSED,
timeout...). NXDOMAIN and NODATA are completed answers with their own AD bit, never
failures. Every dnspython exception is translated into a FAILED :class:`DnsAnswer`
here; nothing from the library escapes :meth:`Resolver.query`: answers carry policyd's
types (:mod:`policyd.adapters.dns_answer`: MX, TLSA, address and TXT records, an
:class:`Rcode`), so callers never import dnspython.

Answers are cached by TTL (clamped), failures briefly (:mod:`policyd.adapters.dns_cache`);
concurrent queries for the same name and type share one lookup (a SingleFlight).

A circuit breaker tells a dead resolver from a slow zone: when a query goes unanswered
for ``HealthTimes.after`` seconds (or fails with no response at all), the resolver itself
is asked for ``localhost.`` (RFC 6761 6.3: resolvers answer it themselves, from memory).
No response within ``HealthTimes.timeout`` opens the breaker: lookups under way and new
ones end FAILED at once ("resolver not answering") instead of each waiting its lifetime,
and the check is repeated every ``HealthTimes.retry`` seconds until any response closes
the breaker by itself.

Queries to configured addresses go through :mod:`policyd.adapters.dns_udp` (long-lived
UDP sockets, :mod:`policyd.codec.dns_wire` to read responses), the usual one without a
task (a callback takes the answer); dnspython (:mod:`policyd.adapters.dns_library`)
serves the rest: a truncated response (over TCP), a name not ASCII, test servers.

Seam for tests: ``Resolver(..., servers=[...])`` takes ``dns.nameserver.Nameserver``
objects in place of the configured addresses. A fake one returns real
``dns.message`` responses (or raises), and the whole of dnspython's resolution logic
(rcodes, NXDOMAIN, CNAME chains, retries) runs as it does against a real server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.TLSA
import dns.resolver

from policyd.adapters.dns_answer import (
    DnsAnswer,
    MxRecord,
    Rcode,
    Record,
    failed,
    from_wire,
)
from policyd.adapters.dns_cache import AnswerCache, Key, cache_key
from policyd.adapters.dns_library import EDNS_PAYLOAD, answers, build_library, library_resolve
from policyd.adapters.dns_udp import TIMER_SLACK, NoResponse, UdpResolver, resolve
from policyd.codec import dns_wire
from policyd.counters import DnsCounters
from policyd.settings import DnsSettings
from policyd.singleflight import SingleFlight, pass_on

__all__ = [
    "EDNS_PAYLOAD",
    "DnsAnswer",
    "HealthTimes",
    "MxRecord",
    "Rcode",
    "Record",
    "Resolver",
]

# A failed lookup is cached this long: a dead resolver is not hammered by every
# queued mail, yet a recovered one is used again within seconds.
FAILED_TTL: Final = 5
# Where the nameservers come from when none are configured (resolv.conf(5)).
RESOLV_CONF: Final = "/etc/resolv.conf"
# The breaker's health check asks for this name: every resolver answers it without
# recursion (RFC 6761 6.3), so only a dead or unreachable resolver leaves it unanswered.
HEALTH_NAME: Final = "localhost."
# The error of lookups failed by the open breaker.
NOT_ANSWERING: Final = "resolver not answering"

# The breaker's messages go to the caller's log; one-shot users (policyctl doctor): none.
_QUIET = logging.getLogger("policyd.dns.quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True, slots=True)
class HealthTimes:
    """The breaker's clock, in seconds (see the module doc). A cold DNSSEC chase may take
    longer than ``after``: that only costs one health check, answered in microseconds by
    a live resolver."""

    after: float = 1.0  # a query unanswered this long makes the resolver suspect
    timeout: float = 1.0  # a live local resolver answers localhost in well under this
    retry: float = 1.0  # while open, the resolver is asked again this often

    def __post_init__(self) -> None:
        for name in ("after", "timeout", "retry"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"health {name} must be a positive number of seconds")


@dataclass(slots=True, eq=False)  # eq=False: each one is itself (a set member)
class _Fast:
    """A lookup under way without a task (see ``Resolver._fast_start``): also the sink
    of its UDP query, which hands it the response in the socket's own callback."""

    resolver: Resolver
    key: Key
    generation: int
    flight: SingleFlight[Key, DnsAnswer]  # the resolver's at the start (clear() makes another)
    shared: asyncio.Future[DnsAnswer]  # what the callers wait for
    deadline: float  # loop time: the end of the lookup's lifetime
    token: int = 0  # its key in Resolver._asking, once its query is sent
    over: bool = False  # ended: by its response, its failure, or the breaker

    def done(self) -> bool:
        return self.over

    def set_result(self, result: dns_wire.Response, /) -> None:
        self.resolver._fast_done(self, result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self.resolver._fast_done(self, None, exception)


class Resolver:
    """Cached, coalescing DNS lookups that report DNSSEC status (see the module doc)."""

    def __init__(
        self,
        settings: DnsSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        servers: Sequence[dns.nameserver.Nameserver] = (),
        health: HealthTimes | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self._settings = settings
        self._timeouts = settings.timeouts  # built (and validated) once, not per query
        self._clock = clock
        self._servers = tuple(servers)
        self._health = health or HealthTimes()
        self._log = log or _QUIET
        self._down = False  # the breaker is open
        self._checker: asyncio.Task[None] | None = None
        self._first_check: asyncio.Future[None] | None = None  # the checker's first verdict
        self._fast: list[UdpResolver] | None = None  # built with the library resolver
        self._library: dns.asyncresolver.Resolver | None = None
        self._cache = AnswerCache(settings.cache_entries)
        self._inflight: SingleFlight[Key, DnsAnswer] = SingleFlight()
        self._asking: dict[int, float] = {}  # resolutions under way: their start (loop time)
        self._tokens = 0  # the key of the latest one in _asking
        self._slow: asyncio.TimerHandle | None = None  # the timer of _sweep_slow
        self._fast_lookups: set[_Fast] = set()  # under way without a task: the breaker ends them
        self._generation = 0
        self.counters = DnsCounters()

    def clear(self) -> None:
        """Forget every cached answer (policyctl flush); lookups under way are not stored.

        The nameservers of /etc/resolv.conf are read again on the next lookup."""
        self._cache.clear()
        self._inflight = SingleFlight()  # lookups under way finish for their callers only
        self._library = None
        if self._fast is not None:
            for client in self._fast:
                client.close()
        self._fast = None
        self._generation += 1

    @property
    def cached(self) -> int:
        """How many answers are cached (for status output)."""
        return len(self._cache)

    def close(self) -> None:
        """Stop the health check and close the sockets (shutdown)."""
        if self._checker is not None:
            self._checker.cancel()
        if self._slow is not None:
            self._slow.cancel()
        self._fast_stop("resolver closed")
        for client in self._fast or ():
            client.close()

    @property
    def down(self) -> bool:
        """The breaker is open: the resolver did not answer its health check."""
        return self._down

    async def query(self, name: str, rdtype: str, *, fresh: bool = False) -> DnsAnswer:
        """Look up ``rdtype`` records of ``name`` (absolute); ``fresh``: not from the cache."""
        rdtype = rdtype.upper()
        # The types of the wire path are data types; only others need dnspython's table.
        if rdtype not in dns_wire.TYPES and dns.rdatatype.is_metatype(
            dns.rdatatype.from_text(rdtype)
        ):
            raise ValueError(f"{rdtype} is not a data type")  # a caller's bug, not DNS
        key = cache_key(name, rdtype)
        cached = None if fresh else self._cache.get(key, self._clock())
        if cached is not None:
            return cached
        if self._down:
            return failed(key[0], rdtype, NOT_ANSWERING)
        generation = self._generation
        flight = self._inflight
        if key not in flight:
            fast = self._fast_start(key, generation, flight)
            if fast is not None:
                flight.adopt(key, fast)
        # One caller giving up (cancelled) does not cancel the lookup the others share.
        return await flight.run(key, lambda: self._lookup(key, generation))

    async def _lookup(self, key: Key, generation: int, lifetime: float = 0.0) -> DnsAnswer:
        try:
            answer = await self._ask(*key, lifetime)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._down or task is None:
                raise
            task.uncancel()  # our own cancel (see _watch): the lookup ends FAILED
            answer = failed(key[0], key[1], NOT_ANSWERING)
        return self._store(key, generation, answer)

    def _store(self, key: Key, generation: int, answer: DnsAnswer) -> DnsAnswer:
        """Count a lookup's answer and cache it, with its TTL clamped."""
        self.counters.outcomes.inc(answer.status.value)
        if answer.error == NOT_ANSWERING:
            return answer  # not cached: the breaker answers as long as the outage lasts
        ttl = self._cache_ttl(answer)
        if ttl != answer.ttl:
            answer = answer.with_ttl(ttl)
        if generation == self._generation and answer.ttl > 0:
            self._cache.put(key, answer, self._clock())
        return answer

    async def _ask(self, name: str, rdtype: str, lifetime: float) -> DnsAnswer:
        """One resolution, watched by the breaker."""
        token = self._watch_slow()
        try:
            answer, responded = await self._resolve(name, rdtype, lifetime)
        finally:
            del self._asking[token]
        if not responded:
            # No server said anything: wait for the health check's verdict (at most its
            # timeout) so that an outage is known before this failure is reported.
            await asyncio.shield(self._suspect())
            if self._down:
                return replace(answer, error=NOT_ANSWERING)
        return answer

    # -- lookups without a task --------------------------------------------------------

    def _fast_start(
        self, key: Key, generation: int, flight: SingleFlight[Key, DnsAnswer]
    ) -> asyncio.Future[DnsAnswer] | None:
        """The usual lookup without a task: one query on an open UDP socket, its answer
        taken by a callback (:meth:`_fast_done`); a task (:meth:`_lookup`) takes over for
        anything else, within the rest of the lifetime. None: not for this path (no
        socket open yet: the first lookups build them; a name or type it cannot send)."""
        name, rdtype = key
        qtype = dns_wire.TYPES.get(rdtype)
        if qtype is None or not self._fast or not name.isascii():
            return None
        lifetime = self._timeouts.lifetime
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[DnsAnswer] = loop.create_future()
        fast = _Fast(self, key, generation, flight, shared, loop.time() + lifetime)
        try:
            sent = self._fast[0].send(name, qtype, min(self._timeouts.per_try, lifetime), fast)
        except (dns_wire.DnsWireError, NoResponse, OSError):
            sent = False  # the task's way says what went wrong
        if not sent:
            return None
        fast.token = self._watch_slow()  # its response comes at a later turn of the loop
        self._fast_lookups.add(fast)
        return fast.shared

    def _fast_done(
        self, fast: _Fast, r: dns_wire.Response | None, error: BaseException | None
    ) -> None:
        """The response (or the failure) of ``fast``'s query, in the socket's callback."""
        if not self._fast_end(fast):
            return  # the breaker ended it
        if r is not None:
            try:  # a bug reaches the callers (as from a task), never leaves them waiting
                answer = None if r.truncated else from_wire(*fast.key, r.qtype, r)
                if answer is not None:
                    fast.shared.set_result(self._store(fast.key, fast.generation, answer))
            except Exception as exc:  # noqa: BLE001 (the callback is the boundary)
                fast.shared.set_exception(exc)
            if fast.shared.done():
                return
        # Not the usual case (a failure, a truncated response): a task takes over, for
        # those waiting and those to come, within the rest of the lifetime.
        left = max(fast.deadline - asyncio.get_running_loop().time(), TIMER_SLACK)
        if fast.flight.get(fast.key) is fast.shared:
            fast.flight.forget(fast.key)
        task = fast.flight.task(fast.key, lambda: self._lookup(fast.key, fast.generation, left))
        task.add_done_callback(functools.partial(pass_on, fast.shared))

    def _fast_stop(self, error: str) -> None:
        """End every lookup under way without a task FAILED with ``error``."""
        for fast in list(self._fast_lookups):
            self._fast_end(fast)  # its query's response, if one comes, is ignored
            # Counted; never cached (no generation is -1).
            fast.shared.set_result(self._store(fast.key, -1, failed(*fast.key, error)))

    def _fast_end(self, fast: _Fast) -> bool:
        """Take ``fast`` off the books; False if it had ended already."""
        if fast.over:
            return False
        fast.over = True
        self._fast_lookups.remove(fast)
        del self._asking[fast.token]
        return True

    # -- the breaker -------------------------------------------------------------------

    def _watch_slow(self) -> int:
        """Put a resolution under the breaker's watch; returns its key in ``_asking``."""
        loop = asyncio.get_running_loop()
        token = self._tokens = self._tokens + 1
        self._asking[token] = loop.time()
        if self._slow is None:
            self._slow = loop.call_later(self._health.after, self._sweep_slow)
        return token

    def _sweep_slow(self) -> None:
        """The timer of the resolutions under way (one for all: a timer per query cost
        more than the query's own work on the cold path): any unanswered for
        ``HealthTimes.after`` seconds makes the resolver suspect. Re-armed for the oldest
        one younger than that."""
        self._slow = None
        loop = asyncio.get_running_loop()
        due = loop.time() - self._health.after
        slow = False
        for started in self._asking.values():  # oldest first (insertion order)
            if started <= due + TIMER_SLACK:
                slow = True
                continue
            self._slow = loop.call_later(started - due, self._sweep_slow)
            break
        if slow:
            self._suspect()

    def _suspect(self) -> asyncio.Future[None]:
        """A query went unanswered: check the resolver itself, once at a time. Returns a
        future done when the check has its first verdict (``down`` is then current)."""
        if self._checker is None or self._checker.done():
            loop = asyncio.get_running_loop()
            self._first_check = loop.create_future()
            self._checker = loop.create_task(self._check(self._first_check))
        assert self._first_check is not None
        return self._first_check

    async def _check(self, first: asyncio.Future[None]) -> None:
        """Ask until the resolver answers: open the breaker on the first silence, close it
        on the first response."""
        try:
            await self._watch(first)
        finally:
            if not first.done():
                first.set_result(None)

    async def _watch(self, first: asyncio.Future[None]) -> None:
        while not await self._alive():
            if not self._down:
                self._down = True
                self._log.warning(
                    "dns: resolver not answering; lookups fail at once until it does "
                    "(cached answers are kept)"
                )
                self._fast_stop(NOT_ANSWERING)
                self._inflight.cancel_all()  # each lookup ends FAILED in _lookup
            if not first.done():
                first.set_result(None)
            await asyncio.sleep(self._health.retry)
        if self._down:
            self._down = False
            self._log.warning("dns: resolver answers again")

    async def _alive(self) -> bool:
        """Any response of any nameserver to the health query, whatever its rcode."""
        try:
            library = self._resolver()
        except dns.exception.DNSException:
            return False  # no nameservers configured: nothing to wait for
        return await answers(library, HEALTH_NAME, self._health.timeout)

    def _cache_ttl(self, answer: DnsAnswer) -> int:
        s = self._settings
        if answer.failed:
            return FAILED_TTL
        ttl = max(s.min_ttl, min(answer.ttl, s.max_ttl))
        if answer.negative:
            ttl = min(ttl, s.negative_ttl_max)
        return ttl

    def _resolver(self) -> dns.asyncresolver.Resolver:
        """The library resolver, built on first use (reading /etc/resolv.conf then)."""
        if self._library is not None:
            return self._library
        s = self._settings
        self._library = library = build_library(s, self._servers, RESOLV_CONF)
        self._fast = (
            []
            if self._servers
            else [
                UdpResolver(ns, s.port, EDNS_PAYLOAD)
                if isinstance(ns, str)
                else UdpResolver(ns.address, ns.port, EDNS_PAYLOAD)
                for ns in library.nameservers
                if isinstance(ns, str | dns.nameserver.Do53Nameserver)
            ]
        )
        return library

    async def _resolve_fast(
        self, name: str, rdtype: str, lifetime: float
    ) -> tuple[DnsAnswer, bool] | None:
        """One lookup over :mod:`policyd.adapters.dns_udp` (see its ``resolve``). None:
        not for this path (test servers, a truncated response, a name that is not ASCII)."""
        qtype = dns_wire.TYPES.get(rdtype)
        try:
            self._resolver()
        except dns.exception.DNSException:
            return None
        clients = list(self._fast or ())
        if qtype is None or not clients or not name.isascii():
            return None
        timeouts = self._timeouts
        return await resolve(
            clients,
            name,
            rdtype,
            qtype,
            per_try=timeouts.per_try,
            lifetime=lifetime or timeouts.lifetime,
        )

    async def _resolve(self, name: str, rdtype: str, lifetime: float) -> tuple[DnsAnswer, bool]:
        """One lookup through dnspython, and whether any server responded at all; every
        library exception becomes FAILED here."""

        fast = await self._resolve_fast(name, rdtype, lifetime)
        if fast is not None:
            return fast
        return await library_resolve(self._resolver, name, rdtype, RESOLV_CONF)
