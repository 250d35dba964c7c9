"""The policy service: answers from memory, gathers evidence under a time bound, decides.

The hot path (:meth:`PolicyService.cached_reply`) is one dict lookup keyed by the raw
request payload; it never awaits and never touches the disk. A miss goes to
:meth:`PolicyService.answer`, which gathers evidence (one gathering in flight per
destination, shared by every concurrent lookup), runs the pure decision core for the
requested profile, logs a line when the decision changes, and caches the encoded reply
until the earliest expiry of the evidence behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from policyd.adapters.store import Kind, Record, Store
from policyd.alerts import AlertKind, Alerts
from policyd.codec import netstring, postfix_policy, socketmap
from policyd.codec.destination import KeyError_, parse_key
from policyd.codec.override_record import override_from_json, override_to_json
from policyd.core.decide import decide
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    Evidence,
    Override,
    ProbeState,
    StsEvidence,
)
from policyd.core.profile import Profile
from policyd.core.types import Outcome, Rule, Verdict
from policyd.counters import ServiceCounters

log = logging.getLogger("policyd")

# An answer is cached at most this long even when all evidence lives longer, so that a
# changed world is noticed without a reload (seconds).
MAX_ANSWER_TTL: Final = 3600.0
# A TEMP answer is cached only briefly: the cause (a dead resolver) may pass at any moment.
TEMP_ANSWER_TTL: Final = 5.0
# Bound on cached answers and remembered verdicts (entries); beyond it the oldest go.
MAX_ANSWERS: Final = 1_000_000
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
        alerts: Alerts | None = None,
        dane_temp_after: float = 0.0,
    ) -> None:
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
        self._by_key: dict[str, set[bytes]] = {}
        self._last: dict[tuple[str, str], Verdict] = {}
        self._inflight: dict[str, asyncio.Task[Evidence]] = {}
        self.stats = Stats()
        self.counters = ServiceCounters()
        self.alerts = alerts or Alerts(log)
        self.dane_temp_after = dane_temp_after  # seconds; 0: no dane-temp alert
        self._temp_since: dict[str, float] = {}  # dest key -> first TEMP of this episode
        self._sample_in = HOT_SAMPLE_EVERY

    # -- configuration ---------------------------------------------------------------

    def set_profiles(self, profiles: tuple[Profile, ...]) -> None:
        self._profiles = {p.name: p for p in profiles}
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
        return dict(self._last)

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
        return hit[0]

    def _timed_cached_reply(self, payload: bytes) -> bytes | None:
        self._sample_in = HOT_SAMPLE_EVERY
        started = time.perf_counter()
        hit = self._answers.get(payload)
        if hit is None or hit[1] < self._monotonic():
            return None
        self.stats.hits += 1
        hit[3][0] += 1
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
        if len(self._answers) >= MAX_ANSWERS:
            oldest = next(iter(self._answers))
            self._drop_payload(oldest)
        self._answers[payload] = (encoded, self._monotonic() + ttl, dest.key, cell)
        self._by_key.setdefault(dest.key, set()).add(payload)

    def _drop_payload(self, payload: bytes) -> None:
        entry = self._answers.pop(payload, None)
        if entry is not None:
            keys = self._by_key.get(entry[2])
            if keys is not None:
                keys.discard(payload)
                if not keys:
                    del self._by_key[entry[2]]

    def _ttl(self, answer: Answer) -> float:
        if answer.verdict.outcome is Outcome.TEMP:
            return TEMP_ANSWER_TTL
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
            self._by_key.clear()
            return
        for payload in self._by_key.pop(key, set()):
            self._answers.pop(payload, None)

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
            return self._finish(dest, profile, verdict, Evidence(dest))
        verdict = decide(evidence, profile, self._clock())
        return self._finish(dest, profile, verdict, evidence)

    def _finish(
        self, dest: Destination, profile: Profile, verdict: Verdict, evidence: Evidence
    ) -> Answer:
        if verdict.outcome is Outcome.TEMP:
            self.stats.temp += 1
        self._watch_temp(dest, verdict)
        self._log_change(dest, profile, verdict)
        if profile.dry_run:
            # Decided, logged and counted as if live; Postfix keeps its own default.
            self.counters.dry_run.inc(profile.name, label_of(verdict))
            return Answer(verdict, evidence, socketmap.reply(socketmap.Status.NOTFOUND))
        return Answer(verdict, evidence, render_reply(verdict))

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
            if len(self._temp_since) >= MAX_ANSWERS:
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
        slot = (profile.name, dest.key)
        before = self._last.get(slot)
        if before is not None and (before.outcome, before.policy) == (
            verdict.outcome,
            verdict.policy,
        ):
            return
        if len(self._last) >= MAX_ANSWERS:
            del self._last[next(iter(self._last))]
        self._last[slot] = verdict
        shown = "" if profile.name == "postfix" else f" profile={profile.name}"
        dry = " dry-run=yes" if profile.dry_run else ""
        text = f"level={level_text(verdict)}{shown}{dry} reason={verdict.reason}"
        log.info("%s: %s", dest.key, text)
        if before is not None:
            text = f"{text} previous={level_text(before)}"
            self._alert_if_weaker(dest, profile, before, verdict)
        task = asyncio.get_running_loop().create_task(
            self.store.append_event(self._clock(), dest.key, text)
        )
        task.add_done_callback(_log_task_failure)

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
        return [(p, decide(evidence, p, now), evidence) for p in self._profiles.values()]

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
            self._last.clear()
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


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("store: could not record an event: %s", exc)


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
    return postfix_policy.render(verdict.policy).replace(" ", ",")


def render_reply(verdict: Verdict) -> bytes:
    if verdict.outcome is Outcome.TEMP:
        return socketmap.reply(socketmap.Status.TEMP, verdict.reason)
    if verdict.policy is None:
        return socketmap.reply(socketmap.Status.NOTFOUND)
    return socketmap.reply(socketmap.Status.OK, postfix_policy.render(verdict.policy))
