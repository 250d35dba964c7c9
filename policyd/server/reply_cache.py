"""The socketmap reply cache: raw request payload in, encoded reply out.

The hot path (:meth:`ReplyCache.cached`) is one dict lookup keyed by the raw request
payload; it never awaits, never allocates and never touches the disk. It does not read the
clock either: expiry is compared with :attr:`ReplyCache.now`, a coarse monotonic time the
server refreshes at least every :data:`CLOCK_TICK` seconds (:meth:`ReplyCache.tick`). So that
this never serves an answer longer than it holds, a reply is kept until its exact expiry less
one tick, rounded down to the second: an answer's TTL is seconds to hours, 0.1 s of it is
nothing. (Should the event loop itself run late, the tick runs late with it.) A miss goes to
:meth:`ReplyCache.reply_for`, which parses the request, asks the service for the answer,
encodes the reply and keeps it for as long as the answer holds. Every reply the server
sends is built here or by the codec (PERM for a bad request, TEMP for a lookup that fails).

The cache subscribes to the service, which says when answers go stale (a changed override,
a flush, fresher evidence). Its destinations are bounded with the service's latest verdicts
(:mod:`policyd.held`): a hit refreshes the destination in that one table.

A reply in use (hit at least once since it was cached, or a refresh of one that was: on
probation, see :mod:`policyd.server.prefetch`) is refreshed in the background from
fresh evidence when the last ``[server] prefetch`` fraction of its life begins, and served
meanwhile (:mod:`policyd.server.prefetch`): the hot path compares the hit's refresh time
where it compared its expiry, and only a hit past it (the first hit of a reply, or one
past its refresh time) leaves the fast branch.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from policyd.codec import netstring, socketmap
from policyd.codec.destination import DestinationError, parse_key
from policyd.core.evidence import Destination
from policyd.core.profile import Profile
from policyd.core.seconds import Seconds
from policyd.core.types import Outcome
from policyd.held import payloads_of, shared
from policyd.server.prefetch import Prefetch
from policyd.service import Answer, PolicyService
from policyd.settings import DEFAULT_PREFETCH
from policyd.told import answer_label

log = logging.getLogger("policyd")

# Cached request payloads per destination (profiles, spellings of the key); more are
# answered but not cached, so that one destination cannot hold unbounded memory.
MAX_PAYLOADS_PER_DESTINATION: Final = 8
# One cache hit in this many is timed for the latency histogram: timing costs about as
# much as the hit itself, and a sample shows the distribution as well as every hit would.
HOT_SAMPLE_EVERY: Final = 64
# Granularity of the hot path's clock (ReplyCache.now), seconds: the server refreshes it at
# least this often, and replies are kept this much less than their answers hold.
CLOCK_TICK: Final = 0.1
# Refreshes due in the same second are spread over this many ticks (one second).
SPREAD_TICKS: Final = round(1 / CLOCK_TICK)
# The refreshes a tick finds due are started over its steps of this many seconds, the clock
# ticking that often until they all have (ReplyCache.tick). All started at the tick, the
# twenty or so a tick holds at 200 refreshes a second ran back to back, and the hits
# meanwhile waited behind them (bench/prefetch.py paced at 5,000/s: p99 1.8 ms, about 1 ms
# with this step). Only then: a tick every step all the time cost an idle daemon 1.3% of a
# CPU on a 2-vCPU VM (0.27% at CLOCK_TICK).
REFRESH_STEP: Final = 0.01
# The shortest wait the tick asks for (event loops' timers have a millisecond's grain).
MIN_WAIT: Final = 0.001
# Refresh-time entries kept beyond twice the cached replies before those of forgotten
# replies are dropped (see ReplyCache._compact).
MIN_REFS: Final = 1024
# What a dry-run profile tells Postfix whatever was decided: Postfix keeps its own default.
_DRY_RUN_REPLY: Final = socketmap.reply(socketmap.Status.NOTFOUND)

# A cached reply: (encoded netstring reply, refresh time, dest key, the answers counter cell
# of its profile and level, valid until (monotonic)). The refresh time is negative (minus
# the time) until the first hit marks the reply in use; a hit after it refreshes the reply
# (or finds it expired). Not to be refreshed (prefetch off, a TEMP): the expiry itself.
_Entry = tuple[bytes, float, str, list[int], float]
# What a refresh decided: the encoded reply, the answer, dest key, answers counter cell.
_Decided = tuple[bytes, Answer, str, list[int]]


def perm(why: str) -> bytes:
    """The encoded PERM reply to a request that cannot be answered."""
    return socketmap.encoded(socketmap.Status.PERM, why)


def failed() -> bytes:
    """The encoded TEMP reply to a lookup that failed inside policyd."""
    return socketmap.encoded(socketmap.Status.TEMP, "internal error, see policyd log")


class ReplyCache:
    __slots__ = (
        "_answers",
        "_buckets",
        "_by_key",
        "_counters",
        "_held",
        "_monotonic",
        "_prefetch",
        "_probation",
        "_refs",
        "_replies",
        "_sample_in",
        "_service",
        "_starting",
        "_stats",
        "_swept",
        "_until_second",
        "_unused_second",
        "now",
    )

    def __init__(
        self,
        service: PolicyService,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        prefetch: float = DEFAULT_PREFETCH,
    ) -> None:
        self._service = service
        self._stats = service.stats
        self._counters = service.counters
        self._monotonic = monotonic
        # raw request payload -> its reply (_Entry)
        self._answers: dict[bytes, _Entry] = {}
        self._prefetch = Prefetch(prefetch, service.stats, self._refresh_if_due)
        # Destination key -> its cached payloads, least recently used first: the table that
        # bounds destinations in memory, shared with the service (policyd.held).
        self._held = service.held
        self._by_key = service.held.order
        # Encoded replies shared by every destination that gets the same one (NOTFOUND...).
        self._replies: dict[bytes, bytes] = {}
        # Expiry down to the whole second, one float object for all within that second.
        self._until_second = Seconds()
        self._unused_second = Seconds()  # the negative refresh times of unused replies
        self._sample_in = HOT_SAMPLE_EVERY
        self.now = monotonic()  # the coarse clock of the hot path, see tick()
        # Refresh times, by tick (CLOCK_TICK): the payloads whose replies come due then (a
        # reply replaced or forgotten since is skipped when its tick comes); _refs in all.
        self._buckets: dict[int, list[bytes]] = {}
        # The payloads of the ticks swept whose refreshes have not been started yet: they
        # start over the steps of the current tick (see tick()).
        self._starting: deque[bytes] = deque()
        # Payloads whose reply, not hit (yet), is refreshed at its time all the same: the
        # reply before it was hit (see _refresh_if_due). A subset of _answers' payloads.
        self._probation: set[bytes] = set()
        self._refs = 0
        self._swept = int(self.now / CLOCK_TICK)  # the last tick whose bucket was looked at
        service.subscribe(self)

    def __len__(self) -> int:
        return len(self._answers)

    def tick(self) -> float:
        """Refresh the hot path's clock, and start refreshes that came due: those of the
        tick just begun spread over its steps (REFRESH_STEP), a share at each, rather than
        all at once. Returns how long the server waits before the next call, in seconds: a
        step while some wait to start, the time to the next tick if it has refreshes due
        (on time for them), else CLOCK_TICK (an idle daemon wakes ten times a second)."""
        self.now = now = self._monotonic()
        if now >= (self._swept + 1) * CLOCK_TICK:
            self._sweep(now)
        starting = self._starting
        next_tick = (self._swept + 1) * CLOCK_TICK
        if starting:
            steps_left = max(1, round((next_tick - now) / REFRESH_STEP))
            for _ in range(math.ceil(len(starting) / steps_left)):
                self._refresh_if_due(starting.popleft())
            if starting:
                return REFRESH_STEP
        if self._swept + 1 in self._buckets:
            return max(MIN_WAIT, next_tick - now)
        return CLOCK_TICK

    # -- the hot path ------------------------------------------------------------------

    def cached(self, payload: bytes) -> bytes | None:
        """The encoded reply for a request payload, if cached and fresh. Never awaits."""
        self._sample_in -= 1
        if not self._sample_in:
            return self._timed_cached(payload)
        hit = self._answers.get(payload)
        if hit is None:
            return None
        if hit[1] < self.now and not self._late(payload, hit):
            return None
        self._stats.hits += 1
        hit[3][0] += 1
        # Least recently used order: this destination goes last.
        by_key = self._by_key
        payloads = by_key.pop(hit[2], None)
        if payloads is not None:
            by_key[hit[2]] = payloads
        return hit[0]

    def _late(self, payload: bytes, hit: _Entry) -> bool:
        """A hit past its refresh time: whether it still holds. The first hit of a reply
        marks it in use (it is refreshed when its time comes); a hit past its refresh time
        starts the refresh (unless under way). The reply is served meanwhile."""
        now = self.now
        if hit[4] < now:
            return False
        due = hit[1]
        if due < 0:
            due = -due
            self._answers[payload] = hit = (hit[0], due, hit[2], hit[3], hit[4])
            if due >= now:
                return True
        self._start(payload, hit)
        return True

    def _start(self, payload: bytes, hit: _Entry) -> None:
        """Refresh ``hit``, the reply to ``payload`` (when there is room: see Prefetch)."""
        if payload not in self._prefetch:  # every hit until it ends comes here
            self._prefetch.start(payload, lambda: self._refresh(payload, hit))

    def _refresh_if_due(self, payload: bytes) -> None:
        """Start the refresh of ``payload``'s reply if it is in use and due now: its tick
        came, or it waited for room. In use: hit since it was cached, or on probation (the
        reply it replaced was hit: a destination asked a few times a TTL may see no lookup
        in one life, and would otherwise wait on the slow path at its next). Not if gone,
        neither of those (it expires), a newer reply not due yet, or expired."""
        hit = self._answers.get(payload)
        if hit is None:
            return
        due = hit[1]
        if due < 0 and payload in self._probation:
            due = -due
        if 0 < due <= self.now <= hit[4]:
            self._start(payload, hit)

    def _sweep(self, now: float) -> None:
        """Queue the refreshes of the replies whose refresh time has come (``now`` is the
        clock just ticked) to start over this tick's steps."""
        last = int(now / CLOCK_TICK)
        buckets = self._buckets
        if last - self._swept > len(buckets):
            ticks: Iterable[int] = sorted(tick for tick in buckets if tick <= last)
        else:
            ticks = range(self._swept + 1, last + 1)
        self._swept = last
        for tick in ticks:
            payloads = buckets.pop(tick, ())
            self._refs -= len(payloads)
            self._starting.extend(payloads)

    def _register(self, payload: bytes, at: float, until: float) -> None:
        """Look at ``payload``'s reply again at ``at`` (its refresh time), or within the
        second after it: replies cached in the same second share their refresh time, and
        their refreshes are spread over the ticks of that second rather than started at
        once (each is a gathering, event-loop time that hits would wait behind)."""
        spread = hash(payload) % SPREAD_TICKS
        latest = math.floor(until / CLOCK_TICK) - 1  # never spread past the expiry
        tick = max(min(math.ceil(at / CLOCK_TICK) + spread, latest), self._swept + 1)
        self._buckets.setdefault(tick, []).append(payload)
        self._refs += 1
        if self._refs > 2 * len(self._answers) + MIN_REFS:
            self._compact()

    def _compact(self) -> None:
        """Drop the payloads whose replies are gone (evicted, invalidated): those of
        replies cached once and forgotten would otherwise wait for their ticks."""
        answers = self._answers
        kept = {s: [p for p in ps if p in answers] for s, ps in self._buckets.items()}
        self._buckets = {s: ps for s, ps in kept.items() if ps}
        self._refs = sum(len(ps) for ps in self._buckets.values())
        self._probation &= answers.keys()

    def _timed_cached(self, payload: bytes) -> bytes | None:
        """:meth:`cached`, timed for the latency histogram."""
        started = time.perf_counter()
        self._sample_in = 0  # counted down to -1 by cached(): the untimed branch
        hit = self.cached(payload)
        self._sample_in = HOT_SAMPLE_EVERY
        if hit is not None:
            self._counters.hot.observe(time.perf_counter() - started)
        return hit

    # -- the slow path -----------------------------------------------------------------

    async def reply_for(self, payload: bytes) -> bytes:
        """The encoded reply for one request payload, from the service."""
        started = time.perf_counter()
        try:
            return await self._reply_for(payload)
        finally:
            self._counters.slow.observe(time.perf_counter() - started)

    async def _reply_for(self, payload: bytes) -> bytes:
        self._stats.lookups += 1
        parsed = self._parse(payload)
        if isinstance(parsed, bytes):
            self._stats.perm += 1
            return parsed
        dest, profile = parsed
        answer = await self._service.answer(dest, profile)
        if answer.verdict.outcome is Outcome.TEMP:
            self._counters.temp += 1
        else:
            self._counters.misses += 1
        cell = self._cell(profile, answer)
        cell[0] += 1
        encoded = _encoded(profile, answer)
        self._remember(payload, encoded, answer, dest.key, cell)
        return encoded

    def _parse(self, payload: bytes) -> tuple[Destination, Profile] | bytes:
        """The destination and profile a request asks for, or the PERM reply to it."""
        try:
            req = socketmap.parse_request(payload)
        except socketmap.SocketmapError as exc:
            return perm(str(exc))
        profile = self._service.profile(req.name)
        if profile is None:
            return perm(f"unknown map name {req.name[:64]!r}")
        try:
            dest = parse_key(req.key)
        except DestinationError as exc:
            return perm(str(exc))
        return dest, profile

    def _remember(
        self,
        payload: bytes,
        encoded: bytes,
        answer: Answer,
        key: str,
        cell: list[int],
        *,
        probation: bool = False,
    ) -> None:
        """Keep ``encoded`` as the reply to ``payload``; ``probation``: refreshed at its
        time even if no lookup hits it (a refresh of a reply that was hit)."""
        if answer.ttl <= 0:
            return
        payloads = payloads_of(self._held.touch(key))
        if payload not in payloads:
            if len(payloads) >= MAX_PAYLOADS_PER_DESTINATION:
                return
            self._by_key[key] = (*payloads, payload) if payloads else payload
        encoded = shared(self._replies, encoded)
        # Valid until a whole second no later than the exact expiry less one tick of the
        # coarse clock (never served longer).
        self.now = now = self._monotonic()
        until = self._until_second(now + answer.ttl - CLOCK_TICK)
        # A TEMP or an answer kept through an outage is not refreshed: it is held briefly,
        # and the next lookup after it asks again anyway.
        refreshable = not answer.kept and answer.verdict.outcome is not Outcome.TEMP
        due = self._prefetch.due(until, answer.ttl, refreshable)
        if due < until:
            self._register(payload, due, until)
            due = self._unused_second(-due)  # whole seconds already: no rounding
        self._on_probation(payload, probation and due < 0)
        self._answers[payload] = (encoded, due, key, cell, until)

    def _on_probation(self, payload: bytes, probation: bool) -> None:
        if probation:
            self._probation.add(payload)
        else:
            self._probation.discard(payload)

    # -- refreshes (prefetch) ------------------------------------------------------------

    async def _refresh(self, payload: bytes, old: _Entry) -> None:
        """Replace ``old``, the reply to ``payload``, with one from fresh evidence. One
        that fails leaves the old reply to expire when it would have."""
        try:
            decided = await self._refreshed(payload)
        except Exception:
            log.exception("prefetch: refreshing %r failed", payload[:200])
            decided = None
        current = self._answers.get(payload)
        if current is not old:
            if current is None or current[0] is not old[0] or current[1] != -old[1]:
                return  # gone stale or forgotten meanwhile: nothing to refresh
            old = current  # only marked in use meanwhile (a first hit, see _late)
        if decided is None:
            self._prefetch.failed()
            self._due(payload, old, old[4])  # no other refresh; it expires at its time
            return
        used = old[1] > 0  # hit in its life (else refreshed on probation)
        self._remember(payload, *decided, probation=used)
        new = self._answers.get(payload)
        if new is old:  # not to be cached (no TTL left, too many payloads)
            self._due(payload, old, old[4])
        elif new is not None and new[4] < old[4] + (old[4] - abs(old[1])):
            # Not renewed by a whole refresh window: the resolver handed back its cached
            # records, counting down. Try again later within their life, when its own
            # prefetch may have renewed them.
            self._due(payload, new, self._prefetch.retry(self.now, new[4]), used=used)

    async def _refreshed(self, payload: bytes) -> _Decided | None:
        """A reply to ``payload`` from fresh evidence, or None if it did not get one (a TEMP,
        an answer kept through an outage)."""
        parsed = self._parse(payload)
        if isinstance(parsed, bytes):
            return None
        dest, profile = parsed
        answer = await self._service.answer(dest, profile, fresh=True)
        if answer.kept or answer.verdict.outcome is Outcome.TEMP:
            return None
        return _encoded(profile, answer), answer, dest.key, self._cell(profile, answer)

    def _cell(self, profile: Profile, answer: Answer) -> list[int]:
        """The answers counter cell of ``answer``'s profile and level."""
        return self._counters.answers.cell(profile.name, answer_label(answer.verdict, profile))

    def _due(self, payload: bytes, entry: _Entry, at: float, *, used: bool = True) -> None:
        """Set when ``entry`` (held for ``payload``) is refreshed again: by a hit after
        ``at``, or by the sweep then. ``used``: its life so far counts as hit (else it
        stays unused, on probation: the sweep refreshes it, and what replaces it is not on
        probation unless a lookup hits this one)."""
        self._answers[payload] = (entry[0], at if used else -at, entry[2], entry[3], entry[4])
        self._on_probation(payload, not used)
        if at < entry[4]:
            self._register(payload, at, entry[4])

    def close(self) -> None:
        """Stop the refreshes under way (shutdown)."""
        self._starting.clear()
        self._prefetch.cancel_all()

    # -- told by the service -----------------------------------------------------------

    def invalidate(self, key: str | None) -> None:
        """Forget cached replies for one destination key, or all of them."""
        by_key = self._by_key
        if key is None:
            self._answers.clear()
            self._probation.clear()
            self._buckets.clear()
            self._starting.clear()
            self._refs = 0
            for dest in by_key:
                by_key[dest] = ()
            return
        if key in by_key:
            for payload in payloads_of(by_key[key]):
                self._answers.pop(payload, None)
                self._probation.discard(payload)
            by_key[key] = ()


def _encoded(profile: Profile, answer: Answer) -> bytes:
    """The encoded socketmap reply that tells Postfix ``answer`` under ``profile``."""
    told = _DRY_RUN_REPLY if profile.dry_run else socketmap.reply_for(answer.verdict)
    return netstring.encode(told)
