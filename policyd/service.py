"""The policy service: answers from memory, gathers evidence under a time bound, decides.

The hot path (:meth:`PolicyService.cached_reply`) is one dict lookup keyed by the raw
request payload; it never awaits and never touches the disk. A miss goes to
:meth:`PolicyService.answer`, which gathers evidence (one gathering in flight per
destination, shared by every concurrent lookup), runs the pure decision core for the
requested profile, logs a line when the decision changes, and caches the encoded reply
until the earliest expiry of the evidence behind it.

Through a resolver outage (the DNS adapter's breaker is open) a destination that would now
get TEMP keeps the last answer decided for it from fresh evidence, for at most
``KEEP_ANSWERS_FOR`` (serve-stale, RFC 8767): from memory, else from the store (after a
restart, or once evicted from memory). Those answers are saved per destination under
``Kind.ANSWER``; events and saved answers leave through the write-behind queue, never on
the answer's path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.adapters.write_behind import WriteBehind
from policyd.alerts import AlertKind, Alerts
from policyd.codec import netstring, postfix_policy, socketmap
from policyd.codec.destination import KeyError_, parse_key
from policyd.codec.records import override_from_json, override_to_json
from policyd.core.decide import decide
from policyd.core.event import Event
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    Evidence,
    Override,
    ProbeState,
    StsEvidence,
)
from policyd.core.profile import Profile
from policyd.core.types import SPACED_ATTRS, Outcome, Policy, Rule, Verdict
from policyd.counters import ServiceCounters

log = logging.getLogger("policyd")

# An answer is cached at most this long even when all evidence lives longer, so that a
# changed world is noticed without a reload (seconds).
MAX_ANSWER_TTL: Final = 3600.0
# A TEMP answer is cached only briefly: the cause (a dead resolver) may pass at any moment.
TEMP_ANSWER_TTL: Final = 5.0
# Destinations whose answers and latest verdicts are kept in memory, by default
# ([server] max_destinations); beyond it the least recently used is forgotten and comes
# back from the slow path (fresh evidence) or, in an outage, from the store.
DEFAULT_MAX_DESTINATIONS: Final = 1_000_000
# Cached request payloads per destination (profiles, spellings of the key); more are
# answered but not cached, so that one destination cannot hold unbounded memory.
MAX_PAYLOADS_PER_DESTINATION: Final = 8
# Distinct verdicts and encoded replies shared between destinations (most destinations get
# one of a few: NOTFOUND for want of evidence, ...); beyond it new ones are not shared.
MAX_SHARED: Final = 4096
# Seconds a destination's last answer is kept for a resolver outage (RFC 8767 4 suggests
# 1 to 3 days of serve-stale; one day: a longer outage defers mail, never weakens it).
KEEP_ANSWERS_FOR: Final = 86400.0
# A kept answer confirmed by fresh evidence is saved again after this many seconds, so
# that its stored copy does not expire while the destination stays in use.
KEEP_REFRESH: Final = KEEP_ANSWERS_FOR / 4
# One cache hit in this many is timed for the latency histogram: timing costs about as
# much as the hit itself, and a sample shows the distribution as well as every hit would.
HOT_SAMPLE_EVERY: Final = 64
# TEMP answers of these rules are a DNS(SEC) failure where DANE may apply (dane-temp alert).
_DANE_TEMP_RULES: Final = frozenset({Rule.DANE, Rule.DNS_FAILURE})


class DaneSourceLike(Protocol):
    async def gather(self, dest: Destination, now: float) -> DnsEvidence: ...


class StsSourceLike(Protocol):
    def cached(self, domain: str, now: float) -> StsEvidence: ...

    async def evidence(self, domain: str) -> StsEvidence: ...

    def forget(self, domain: str | None) -> None: ...


class ProbeSourceLike(Protocol):
    def cached(self, key: str) -> ProbeState | None: ...

    def want(self, dest: Destination, dns: DnsEvidence) -> bool: ...

    def forget(self, key: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    evidence: Evidence
    reply: bytes  # socketmap reply payload
    kept: bool = False  # an earlier answer, kept through a resolver outage


class _Seen:
    """The latest verdict for a (profile, destination), and when it was last saved."""

    __slots__ = ("saved_at", "verdict")

    def __init__(self, verdict: Verdict, saved_at: float) -> None:
        self.verdict = verdict
        self.saved_at = saved_at


def _payloads(held: bytes | tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A destination's cached payloads as held in ``_by_key``: one payload is held as
    itself."""
    return (held,) if isinstance(held, bytes) else held


class _Seconds:
    """A time down to a whole second, as one float object shared by every call within that
    second (a float of its own per destination is 24 bytes)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, at: float) -> float:
        whole = float(math.floor(at))
        if whole == self.last:
            return self.last
        self.last = whole
        return whole


def _never() -> bool:
    return False


_T = TypeVar("_T")


def _shared(table: dict[_T, _T], value: _T) -> _T:
    """One copy of equal values for many destinations, up to MAX_SHARED of them."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) < MAX_SHARED:
        table[value] = value
    return value


@dataclass(slots=True)
class Stats:
    lookups: int = 0
    hits: int = 0
    temp: int = 0
    perm: int = 0


class PolicyService:
    def __init__(
        self,
        profiles: tuple[Profile, ...],
        store: Store,
        dane: DaneSourceLike,
        sts: StsSourceLike,
        probe: ProbeSourceLike,
        *,
        lookup_budget: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        dns_down: Callable[[], bool] = _never,
        max_destinations: int = DEFAULT_MAX_DESTINATIONS,
        alerts: Alerts | None = None,
        dane_temp_after: float = 0.0,
    ) -> None:
        if max_destinations < 1:
            raise ValueError("max_destinations must be at least 1")
        self._profiles = {p.name: p for p in profiles}
        self.store = store
        self.dane = dane
        self.sts = sts
        self.probe = probe
        self.lookup_budget = lookup_budget
        self._clock = clock
        self._monotonic = monotonic
        self.overrides: dict[str, Override] = {}
        # raw request payload -> (encoded netstring reply, valid until (monotonic), dest key,
        # the answers counter cell of its profile and level)
        self._answers: dict[bytes, tuple[bytes, float, str, list[int]]] = {}
        # Destination key -> its cached payloads (one payload as itself, not in a tuple: the
        # usual case, kept small), in least-recently-used-first order: every destination
        # with a cached answer or a latest verdict is here, and only max_destinations of
        # them (see _touch).
        self._by_key: dict[str, bytes | tuple[bytes, ...]] = {}
        self.max_destinations = max_destinations
        self.evicted = 0  # destinations forgotten at the bound, since start
        # Encoded replies shared by every destination that gets the same one (NOTFOUND...).
        self._replies: dict[bytes, bytes] = {}
        self._verdicts: dict[Verdict, Verdict] = {}
        # Profile name -> destination key -> its latest verdict (one dict per profile: no
        # (profile, key) tuple per destination).
        self._last: dict[str, dict[str, _Seen]] = {p.name: {} for p in profiles}
        # Whole seconds as one float object for every destination stamped within that
        # second: answers' expiry (monotonic) and verdicts' saved_at (clock).
        self._until_second = _Seconds()
        self._saved_second = _Seconds()
        self._inflight: dict[str, asyncio.Task[Evidence]] = {}
        self._dns_down = dns_down
        # Events and kept answers reach the store from here; the daemon runs writes.run().
        self.writes = WriteBehind(store)
        self.stats = Stats()
        self.counters = ServiceCounters()
        self.alerts = alerts or Alerts(log)
        self.dane_temp_after = dane_temp_after  # seconds; 0: no dane-temp alert
        self._temp_since: dict[str, float] = {}  # dest key -> first TEMP of this episode
        self._sample_in = HOT_SAMPLE_EVERY

    # -- configuration ---------------------------------------------------------------

    def set_profiles(self, profiles: tuple[Profile, ...]) -> None:
        self._profiles = {p.name: p for p in profiles}
        # a removed profile's verdicts would escape eviction
        self._last = {name: self._last.get(name, {}) for name in self._profiles}
        self.invalidate(None)

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return tuple(self._profiles.values())

    async def load_overrides(self) -> None:
        """(Re)read overrides from the store: at start, on SIGHUP, and periodically so that
        hosts sharing a Redis store see each other's overrides. Only changed keys lose
        their cached answers."""
        loaded: dict[str, Override] = {}
        for rec in await self.store.scan(Kind.OVERRIDE):
            try:
                loaded[rec.key] = override_from_json(rec.key, rec.value)
            except ValueError as exc:  # the codec raises nothing else
                log.error("%s: ignoring unreadable override: %s", rec.key, exc)
        changed = {
            k
            for k in loaded.keys() | self.overrides.keys()
            if loaded.get(k) != self.overrides.get(k)
        }
        self.overrides = loaded
        for key in changed:
            self.invalidate(key)

    def remembered(self) -> dict[tuple[str, str], Verdict]:
        """The latest verdict per (profile name, destination key): policyctl report."""
        return {
            (name, key): seen.verdict
            for name, seen_by_key in self._last.items()
            for key, seen in seen_by_key.items()
        }

    @property
    def cached_answers(self) -> int:
        """Cached socketmap replies (policyctl status)."""
        return len(self._answers)

    @property
    def cached_destinations(self) -> int:
        """Destinations with at least one cached reply (metrics)."""
        return len(self._by_key)

    # -- the hot path ------------------------------------------------------------------

    def cached_reply(self, payload: bytes) -> bytes | None:
        """The encoded reply for a request payload, if cached and fresh. Never awaits."""
        self._sample_in -= 1
        if not self._sample_in:
            return self._timed_cached_reply(payload)
        hit = self._answers.get(payload)
        if hit is None:
            return None
        if hit[1] < self._monotonic():
            return None
        self.stats.hits += 1
        hit[3][0] += 1
        # Least recently used order: this destination goes last.
        by_key = self._by_key
        payloads = by_key.pop(hit[2], None)
        if payloads is not None:
            by_key[hit[2]] = payloads
        return hit[0]

    def _timed_cached_reply(self, payload: bytes) -> bytes | None:
        self._sample_in = HOT_SAMPLE_EVERY
        started = time.perf_counter()
        hit = self._answers.get(payload)
        if hit is None or hit[1] < self._monotonic():
            return None
        self.stats.hits += 1
        hit[3][0] += 1
        # Least recently used order: this destination goes last.
        by_key = self._by_key
        payloads = by_key.pop(hit[2], None)
        if payloads is not None:
            by_key[hit[2]] = payloads
        self.counters.hot.observe(time.perf_counter() - started)
        return hit[0]

    async def reply_for(self, payload: bytes) -> bytes:
        """The encoded netstring reply for one request payload (the slow path)."""
        started = time.perf_counter()
        try:
            return await self._reply_for(payload)
        finally:
            self.counters.slow.observe(time.perf_counter() - started)

    async def _reply_for(self, payload: bytes) -> bytes:
        self.stats.lookups += 1
        try:
            req = socketmap.parse_request(payload)
        except socketmap.SocketmapError as exc:
            self.stats.perm += 1
            return netstring.encode(socketmap.reply(socketmap.Status.PERM, str(exc)))
        profile = self._profiles.get(req.name)
        if profile is None:
            self.stats.perm += 1
            return netstring.encode(
                socketmap.reply(socketmap.Status.PERM, f"unknown map name {req.name[:64]!r}")
            )
        try:
            dest = parse_key(req.key)
        except KeyError_ as exc:
            self.stats.perm += 1
            return netstring.encode(socketmap.reply(socketmap.Status.PERM, str(exc)))
        answer = await self.answer(dest, profile)
        if answer.verdict.outcome is Outcome.TEMP:
            self.counters.temp += 1
        else:
            self.counters.misses += 1
        cell = self.counters.answers.cell(profile.name, answer_label(answer, profile))
        cell[0] += 1
        encoded = netstring.encode(answer.reply)
        self._remember(payload, encoded, answer, dest, cell)
        return encoded

    def _remember(
        self, payload: bytes, encoded: bytes, answer: Answer, dest: Destination, cell: list[int]
    ) -> None:
        ttl = self._ttl(answer)
        if ttl <= 0:
            return
        key = dest.key
        payloads = _payloads(self._touch(key))
        if payload not in payloads:
            if len(payloads) >= MAX_PAYLOADS_PER_DESTINATION:
                return
            self._by_key[key] = (*payloads, payload) if payloads else payload
        encoded = _shared(self._replies, encoded)
        # Valid until a whole second no later than the exact expiry (never served longer).
        until = self._until_second(self._monotonic() + ttl)
        self._answers[payload] = (encoded, until, key, cell)

    def _touch(self, key: str) -> bytes | tuple[bytes, ...]:
        """Make ``key`` the most recently used destination (adding it if new, and then
        forgetting the least recently used beyond max_destinations); its payloads."""
        by_key = self._by_key
        payloads = by_key.pop(key, ())
        by_key[key] = payloads
        while len(by_key) > self.max_destinations:
            self._evict(next(iter(by_key)))
        return payloads

    def _evict(self, key: str) -> None:
        """Forget a destination's cached answers and latest verdicts (not its store
        records): its next lookup gathers fresh evidence."""
        for payload in _payloads(self._by_key.pop(key, ())):
            self._answers.pop(payload, None)
        for seen_by_key in self._last.values():
            seen_by_key.pop(key, None)
        self.evicted += 1

    def _ttl(self, answer: Answer) -> float:
        if answer.verdict.outcome is Outcome.TEMP or answer.kept:
            return TEMP_ANSWER_TTL  # a kept answer is asked again soon: the outage may end
        now = self._clock()
        ev = answer.evidence
        limits = [MAX_ANSWER_TTL]
        if ev.dns is not None and ev.dns.expires_at:
            limits.append(ev.dns.expires_at - now)
        if ev.sts.policy is not None:
            limits.append(ev.sts.policy.expires_at - now)
        if ev.sts.pending:
            limits.append(TEMP_ANSWER_TTL)
        if ev.override is not None and ev.override.expires_at is not None:
            limits.append(ev.override.expires_at - now)
        return min(limits)

    def invalidate(self, key: str | None) -> None:
        """Forget cached answers for one destination key, or all of them."""
        if key is None:
            self._answers.clear()
            for dest in self._by_key:
                self._by_key[dest] = ()
            return
        if key in self._by_key:
            for payload in _payloads(self._by_key[key]):
                self._answers.pop(payload, None)
            self._by_key[key] = ()

    # -- deciding ----------------------------------------------------------------------

    async def answer(self, dest: Destination, profile: Profile) -> Answer:
        now = self._clock()
        override = self._override(dest, now)
        if override is not None:
            # An override outranks all evidence: answer without gathering any.
            evidence = Evidence(dest, override=override)
            return self._finish(dest, profile, decide(evidence, profile, now), evidence)
        try:
            async with asyncio.timeout(self.lookup_budget):
                evidence = await self._evidence(dest)
        except TimeoutError:
            verdict = Verdict(
                Outcome.TEMP,
                Rule.DNS_FAILURE,
                f"lookup did not complete within {self.lookup_budget:g}s",
            )
            evidence = Evidence(dest)
        else:
            verdict = decide(evidence, profile, self._clock())
        if verdict.outcome is Outcome.TEMP and self._dns_down():
            kept = await self._kept(dest, profile)
            if kept is not None:
                # a dry-run profile tells Postfix NOTFOUND, kept answer or not
                reply = (
                    socketmap.reply(socketmap.Status.NOTFOUND)
                    if profile.dry_run
                    else render_reply(kept)
                )
                return Answer(kept, evidence, reply, kept=True)
        return self._finish(dest, profile, verdict, evidence)

    async def _kept(self, dest: Destination, profile: Profile) -> Verdict | None:
        """The last answer decided from fresh evidence, if saved within KEEP_ANSWERS_FOR:
        from memory, else from the store (a store error: nothing kept, TEMP stands)."""
        now = self._clock()
        seen = self._last.get(profile.name, {}).get(dest.key)
        if seen is not None:
            # A TEMP decided from fresh evidence (a bogus zone) is the latest truth: what
            # was decided before it is not kept.
            fresh = now - seen.saved_at <= KEEP_ANSWERS_FOR
            return seen.verdict if seen.verdict.outcome is not Outcome.TEMP and fresh else None
        try:
            record = await self.store.get(Kind.ANSWER, dest.key)
        except StoreError as exc:
            log.error("%s: cannot read the kept answer: %s", dest.key, exc)
            return None
        if record is None or (record.expires_at is not None and record.expires_at <= now):
            return None
        try:
            return answers_from_json(record.value).get(profile.name)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            log.error("%s: ignoring an unreadable kept answer: %s", dest.key, exc)
            return None

    def _finish(
        self, dest: Destination, profile: Profile, verdict: Verdict, evidence: Evidence
    ) -> Answer:
        verdict, reply = as_answered(verdict)
        if verdict.outcome is Outcome.TEMP:
            self.stats.temp += 1
        self._watch_temp(dest, verdict)
        self._log_change(dest, profile, verdict)
        if profile.dry_run:
            # Decided, logged and counted as if live; Postfix keeps its own default.
            self.counters.dry_run.inc(profile.name, label_of(verdict))
            return Answer(verdict, evidence, socketmap.reply(socketmap.Status.NOTFOUND))
        return Answer(verdict, evidence, reply)

    def _watch_temp(self, dest: Destination, verdict: Verdict) -> None:
        """The dane-temp alert: TEMP for a DNS(SEC) reason for longer than allowed."""
        key = dest.key
        if verdict.outcome is not Outcome.TEMP or verdict.rule not in _DANE_TEMP_RULES:
            if self._temp_since.pop(key, None) is not None:
                self.alerts.close(AlertKind.DANE_TEMP, key)
            return
        now = self._clock()
        since = self._temp_since.get(key)
        if since is None:
            if len(self._temp_since) >= self.max_destinations:
                del self._temp_since[next(iter(self._temp_since))]
            self._temp_since[key] = since = now
        if self.dane_temp_after and now - since >= self.dane_temp_after:
            self.alerts.open(
                AlertKind.DANE_TEMP,
                key,
                f"destination={key}",
                seconds=int(now - since),
                reason=verdict.reason,
            )

    def _log_change(self, dest: Destination, profile: Profile, verdict: Verdict) -> None:
        seen_by_key = self._last.setdefault(profile.name, {})
        now = self._clock()
        seen = seen_by_key.get(dest.key)
        before = None if seen is None else seen.verdict
        if (
            seen is not None
            and before is not None
            and (before.outcome, before.policy)
            == (
                verdict.outcome,
                verdict.policy,
            )
        ):
            if verdict.outcome is not Outcome.TEMP and now - seen.saved_at > KEEP_REFRESH:
                seen.saved_at = self._saved_second(now)
                self._save_kept(dest.key, now)
            return
        self._touch(dest.key)
        # saved_at down to the second: a kept answer lives at most KEEP_ANSWERS_FOR.
        seen_by_key[dest.key] = _Seen(_shared(self._verdicts, verdict), self._saved_second(now))
        event = Event(
            now,
            dest.key,
            profile.name,
            verdict.rule,
            level_text(verdict),
            verdict.reason,
            previous=None if before is None else level_text(before),
            dry_run=profile.dry_run,
        )
        # The log line names only a profile other than Postfix's default one.
        shown = "" if profile.name == "postfix" else f" profile={profile.name}"
        dry = " dry-run=yes" if profile.dry_run else ""
        log.info("%s: level=%s%s%s reason=%s", dest.key, event.level, shown, dry, event.reason)
        if before is not None:
            self._alert_if_weaker(dest, profile, before, verdict)
        self.writes.event(event)
        self._save_kept(dest.key, now)

    def _save_kept(self, key: str, now: float) -> None:
        """Queue the record of the answers to keep for ``key``: every profile's latest
        verdict that is not TEMP (a TEMP from fresh evidence removes what was kept).
        Nothing is saved during an outage: a TEMP then says nothing new."""
        if self._dns_down():
            return
        kept = {}
        for name, seen_by_key in self._last.items():
            seen = seen_by_key.get(key)
            if seen is not None and seen.verdict.outcome is not Outcome.TEMP:
                kept[name] = seen.verdict
        value = answers_to_json(kept)
        self.writes.put(Record(Kind.ANSWER, key, value, now + KEEP_ANSWERS_FOR))

    def _alert_if_weaker(
        self, dest: Destination, profile: Profile, before: Verdict, after: Verdict
    ) -> None:
        """The level-dropped alert. Probe damping has already held back unconfirmed
        weaker results; TEMP (no delivery) and overrides (the postmaster's own) are not
        drops."""
        if Outcome.TEMP in (before.outcome, after.outcome) or after.rule is Rule.OVERRIDE:
            return
        if after.strength < before.strength:
            self.alerts.fire(
                AlertKind.LEVEL_DROPPED,
                f"destination={dest.key}",
                profile=profile.name,
                previous=level_text(before),
                level=level_text(after),
                reason=after.reason,
            )

    def _override(self, dest: Destination, now: float) -> Override | None:
        ov = self.overrides.get(dest.key)
        if ov is None or not ov.active_at(now):
            return None
        return ov

    async def _evidence(self, dest: Destination) -> Evidence:
        task = self._inflight.get(dest.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._gather(dest))
            self._inflight[dest.key] = task
            key = dest.key
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one slow caller timing out must not cancel the others' shared work.
        return await asyncio.shield(task)

    async def _gather(self, dest: Destination) -> Evidence:
        now = self._clock()
        override = self._override(dest, now)
        if dest.parent_form or dest.is_address:
            return Evidence(dest, override=override)
        sts_wanted = not dest.bracketed and dest.port == 25
        dns_task = asyncio.ensure_future(self.dane.gather(dest, now))
        # For a known domain the STS source answers from memory at once and refreshes
        # in the background; a cold one is fetched inline within the source's budget.
        sts_ev = await self.sts.evidence(dest.name) if sts_wanted else StsEvidence()
        dns = await dns_task
        if dns.hosts:
            self.probe.want(dest, dns)
        return Evidence(
            dest,
            override=override,
            dns=dns,
            sts=sts_ev,
            probe=self.probe.cached(dest.key),
        )

    async def explain(self, dest: Destination) -> list[tuple[Profile, Verdict, Evidence]]:
        evidence = await self._evidence(dest)
        now = self._clock()
        return [
            (p, as_answered(decide(evidence, p, now))[0], evidence) for p in self._profiles.values()
        ]

    # -- overrides and flushing --------------------------------------------------------

    async def set_override(self, ov: Override) -> None:
        await self.store.put(Record(Kind.OVERRIDE, ov.key, override_to_json(ov), ov.expires_at))
        self.overrides[ov.key] = ov
        self.invalidate(ov.key)

    async def delete_override(self, key: str) -> bool:
        found = await self.store.delete(Kind.OVERRIDE, key)
        found = self.overrides.pop(key, None) is not None or found
        self.invalidate(key)
        return found

    async def reload_override(self, key: str) -> None:
        """Read one override again (a fleet member set or deleted it); StoreError escapes."""
        rec = await self.store.get(Kind.OVERRIDE, key)
        ov: Override | None = None
        if rec is not None:
            try:
                ov = override_from_json(rec.key, rec.value)
            except ValueError as exc:
                log.error("%s: ignoring unreadable override: %s", rec.key, exc)
        if ov == self.overrides.get(key):
            return
        if ov is None:
            del self.overrides[key]
        else:
            self.overrides[key] = ov
        self.invalidate(key)

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        count = await self.store.flush(key, mta_sts=mta_sts)
        self.forget(key, mta_sts=mta_sts)
        return count

    def forget(self, key: str | None, *, mta_sts: bool = True) -> None:
        """Drop what memory holds for one key or all (a flush here or on a fleet member);
        cached MTA-STS policies only with ``mta_sts`` (trust on first use)."""
        if key is None:
            self.invalidate(None)
            for seen_by_key in self._last.values():
                seen_by_key.clear()
            self._by_key.clear()
        else:
            self.invalidate(key)
        if mta_sts:
            self.sts.forget(key)
        self.probe.forget(key)

    def expire_overrides(self) -> None:
        """Drop expired overrides from memory (periodic housekeeping)."""
        now = self._clock()
        for key in [k for k, o in self.overrides.items() if not o.active_at(now)]:
            del self.overrides[key]
            self.invalidate(key)


def label_of(verdict: Verdict) -> str:
    """The level as a metrics label: TEMP, NOTFOUND or the policy's level keyword."""
    if verdict.outcome is Outcome.TEMP:
        return "TEMP"
    if verdict.policy is None:
        return "NOTFOUND"
    return verdict.policy.level.value


def answer_label(answer: Answer, profile: Profile) -> str:
    """The level label of what Postfix was told (dry-run profiles tell NOTFOUND)."""
    return "NOTFOUND" if profile.dry_run else label_of(answer.verdict)


def level_text(verdict: Verdict) -> str:
    if verdict.outcome is Outcome.TEMP:
        return "TEMP"
    if verdict.policy is None:
        return "NOTFOUND"
    # One word for log lines and reports: without the policy_string lines (spaces inside),
    # which repeat the mx patterns for TLSRPT.
    pol = verdict.policy
    brief = Policy(pol.level, pol.match, tuple(a for a in pol.attrs if a[0] not in SPACED_ATTRS))
    return postfix_policy.render(brief).replace(" ", ",")


def _render(verdict: Verdict) -> bytes:
    if verdict.outcome is Outcome.TEMP:
        return socketmap.reply(socketmap.Status.TEMP, verdict.reason)
    if verdict.policy is None:
        return socketmap.reply(socketmap.Status.NOTFOUND)
    return socketmap.reply(socketmap.Status.OK, postfix_policy.render(verdict.policy))


def as_answered(verdict: Verdict) -> tuple[Verdict, bytes]:
    """The verdict as Postfix gets it, with its socketmap reply payload. A policy too long
    for one reply (socketmap_table(5): 100,000 bytes) is answered TEMP: truncated, it would
    be a different policy, and weaker than the one decided."""
    try:
        return verdict, _render(verdict)
    except socketmap.ReplyTooLong as exc:
        deferred = Verdict(Outcome.TEMP, verdict.rule, f"policy not sent: {exc}")
        return deferred, _render(deferred)


def render_reply(verdict: Verdict) -> bytes:
    return as_answered(verdict)[1]


def answers_to_json(kept: dict[str, Verdict]) -> str:
    """Kept answers per profile name: the policy (Postfix syntax, null for NOTFOUND), the
    rule and the reason."""
    return json.dumps(
        {
            name: {
                "policy": None if v.policy is None else postfix_policy.render(v.policy),
                "rule": v.rule.value,
                "reason": v.reason,
            }
            for name, v in kept.items()
        },
        sort_keys=True,
    )


def answers_from_json(text: str) -> dict[str, Verdict]:
    """Inverse of :func:`answers_to_json`; ValueError (or KeyError, TypeError) when bad."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("kept answers: expected an object")
    out: dict[str, Verdict] = {}
    for name, item in doc.items():
        pol_text = item["policy"]
        rule = Rule(item["rule"])
        reason = str(item["reason"])
        if pol_text is None:
            out[str(name)] = Verdict(Outcome.NOTFOUND, rule, reason)
        else:
            out[str(name)] = Verdict(
                Outcome.POLICY, rule, reason, postfix_policy.parse(str(pol_text))
            )
    return out
