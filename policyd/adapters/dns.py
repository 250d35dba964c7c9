"""DNS lookups with the DNSSEC outcome of each answer, over ``dns.asyncresolver``.

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
UDP sockets, :mod:`policyd.codec.dns_wire` to read responses): on the cold path that costs
a fraction of dnspython's resolver. dnspython still serves what that path does not: a
truncated response (retried over TCP), a name that is not ASCII, and test servers.

Seam for tests: ``Resolver(..., servers=[...])`` takes ``dns.nameserver.Nameserver``
objects in place of the configured addresses. A fake one returns real
``dns.message`` responses (or raises), and the whole of dnspython's resolution logic
(rcodes, NXDOMAIN, CNAME chains, retries) runs as it does against a real server.
"""

from __future__ import annotations

import asyncio
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
    chain_of,
    failed,
    library_errors,
    library_records,
    status_of,
)
from policyd.adapters.dns_cache import AnswerCache, Key, cache_key
from policyd.adapters.dns_udp import UdpResolver, resolve
from policyd.codec import dns_wire
from policyd.counters import DnsCounters
from policyd.settings import DnsSettings
from policyd.singleflight import SingleFlight

__all__ = [
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
# EDNS(0) UDP payload size: the DNS Flag Day 2020 value, which avoids IP fragmentation.
EDNS_PAYLOAD: Final = 1232
# Where the nameservers come from when none are configured (resolv.conf(5)).
RESOLV_CONF: Final = "/etc/resolv.conf"
# The breaker's health check asks for this name: every resolver answers it without
# recursion (RFC 6761 6.3), so only a dead or unreachable resolver leaves it unanswered.
HEALTH_NAME: Final = "localhost."
# The error of lookups failed by the open breaker.
NOT_ANSWERING: Final = "resolver not answering"
# A timer may fire this early (event loops round delays to milliseconds), seconds.
TIMER_SLACK: Final = 0.002

# The breaker's messages go where the caller says (the daemon: its log); one-shot users
# (policyctl doctor) stay quiet.
_QUIET = logging.getLogger("policyd.dns.quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

# dnspython >= 2.8 rejects a TLSA record whose data length does not fit its matching
# type, and with it the whole response (FormError): one malformed record would turn the
# lookup into a failure and the domain into a deferral. RFC 7672 3.1 and Postfix treat
# such a record as unusable and go on with the others, so TLSA data is taken as
# published and judged by policyd.core.evidence.Tlsa.usable. (TLSA only, not SMIMEA.)
dns.rdtypes.ANY.TLSA.TLSA._cert_length_by_mtype = {}


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
        for client in self._fast or ():
            client.close()

    @property
    def down(self) -> bool:
        """The breaker is open: the resolver did not answer its health check."""
        return self._down

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Look up ``rdtype`` records of ``name`` (absolute; no search list)."""
        rdtype = rdtype.upper()
        # The types of the wire path are data types; only others need dnspython's table.
        if rdtype not in dns_wire.TYPES and dns.rdatatype.is_metatype(
            dns.rdatatype.from_text(rdtype)
        ):
            raise ValueError(f"{rdtype} is not a data type")  # a caller's bug, not DNS
        key = cache_key(name, rdtype)
        cached = self._cache.get(key, self._clock())
        if cached is not None:
            return cached
        if self._down:
            return failed(key[0], rdtype, NOT_ANSWERING)
        generation = self._generation
        # One caller giving up (cancelled) does not cancel the lookup the others share.
        return await self._inflight.run(key, lambda: self._lookup(key, generation))

    async def _lookup(self, key: Key, generation: int) -> DnsAnswer:
        try:
            answer = await self._ask(*key)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._down or task is None:
                raise
            task.uncancel()  # our own cancel (see _watch): the lookup ends FAILED
            answer = failed(key[0], key[1], NOT_ANSWERING)
        self.counters.outcomes.inc(answer.status.value)
        if answer.error == NOT_ANSWERING:
            return answer  # not cached: the breaker answers as long as the outage lasts
        ttl = self._cache_ttl(answer)
        if ttl != answer.ttl:
            answer = answer.with_ttl(ttl)
        if generation == self._generation and answer.ttl > 0:
            self._cache.put(key, answer, self._clock())
        return answer

    async def _ask(self, name: str, rdtype: str) -> DnsAnswer:
        """One resolution, watched by the breaker."""
        loop = asyncio.get_running_loop()
        token = self._tokens = self._tokens + 1
        self._asking[token] = loop.time()
        if self._slow is None:
            self._slow = loop.call_later(self._health.after, self._sweep_slow)
        try:
            answer, responded = await self._resolve(name, rdtype)
        finally:
            del self._asking[token]
        if not responded:
            # No server said anything: wait for the health check's verdict (at most its
            # timeout) so that an outage is known before this failure is reported.
            await asyncio.shield(self._suspect())
            if self._down:
                return replace(answer, error=NOT_ANSWERING)
        return answer

    # -- the breaker -------------------------------------------------------------------

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
        request = dns.message.make_query(HEALTH_NAME, "A", flags=dns.flags.RD)
        backend = dns.asyncbackend.get_default_backend()
        for entry in library.nameservers:
            server = (
                dns.nameserver.Do53Nameserver(entry, library.port)
                if isinstance(entry, str)
                else entry
            )
            try:
                await server.async_query(request, self._health.timeout, None, 0, False, backend)
            except (dns.exception.DNSException, OSError, EOFError, ValueError):
                continue
            return True
        return False

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
        library = dns.asyncresolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = list(self._servers)
        if not servers:
            servers = list(s.nameservers) or list(_resolv_conf_nameservers())
        library.nameservers = servers
        library.port = s.port
        library.timeout = s.timeouts.per_try
        library.lifetime = s.timeouts.lifetime
        library.cache = None  # this class caches, with its own TTL bounds
        library.retry_servfail = False  # a validator's SERVFAIL (bogus) will not improve
        # AD in the query asks for the AD bit alone (RFC 6840 5.7); without DO the resolver
        # leaves out RRSIG and NSEC records (RFC 3225 3), which nothing here reads: answers
        # stay small and quick to parse. EDNS stays for the payload size and for Extended
        # DNS Errors (RFC 8914). CD stays clear: the resolver must validate.
        library.use_edns(0, 0, EDNS_PAYLOAD)
        library.flags = dns.flags.RD | dns.flags.AD
        self._library = library
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

    async def _resolve_fast(self, name: str, rdtype: str) -> tuple[DnsAnswer, bool] | None:
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
            clients, name, rdtype, qtype, per_try=timeouts.per_try, lifetime=timeouts.lifetime
        )

    async def _resolve(self, name: str, rdtype: str) -> tuple[DnsAnswer, bool]:
        """One lookup through dnspython, and whether any server responded at all; every
        library exception becomes FAILED here."""

        def failure(error: str, rcode: Rcode | None = None) -> tuple[DnsAnswer, bool]:
            return failed(name, rdtype, error, rcode), True

        fast = await self._resolve_fast(name, rdtype)
        if fast is not None:
            return fast
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:  # label too long, bad IDNA...
            return failure(f"invalid name: {exc}")
        try:
            library = self._resolver()
            result = await library.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            # A completed answer: its AD bit says whether the denial was validated.
            response = exc.kwargs.get("responses", {}).get(qname)
            canonical, ttl = chain_of(qname, response)
            status = status_of(response)
            return DnsAnswer(name, rdtype, status, Rcode.NXDOMAIN, (), canonical, ttl), True
        except dns.resolver.LifetimeTimeout as exc:
            errors = exc.kwargs.get("errors", [])
            return failed(name, rdtype, "timeout"), any(e[4] is not None for e in errors)
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors", [])
            error, rcode = library_errors(errors)
            return failed(name, rdtype, error, rcode), any(e[4] is not None for e in errors)
        except dns.resolver.YXDOMAIN:
            return failure("YXDOMAIN", Rcode.YXDOMAIN)
        except dns.resolver.NoResolverConfiguration:
            return failure(f"no nameservers in {RESOLV_CONF}")
        except dns.exception.DNSException as exc:  # the library's root: anything else of it
            return failure(f"{type(exc).__name__}: {exc}")
        records = library_records(result.rrset) if result.rrset is not None else ()
        canonical, ttl = chain_of(qname, result.response)
        status = status_of(result.response)
        return DnsAnswer(name, rdtype, status, Rcode.NOERROR, records, canonical, ttl), True


def _resolv_conf_nameservers() -> Sequence[str | dns.nameserver.Nameserver]:
    """Only the nameservers of resolv.conf: search lists, ndots and rotation do not apply
    to the absolute names we look up. Raises NoResolverConfiguration (translated by the
    caller) if there are none."""
    reader = dns.resolver.Resolver(configure=False)
    reader.read_resolv_conf(RESOLV_CONF)
    return reader.nameservers
