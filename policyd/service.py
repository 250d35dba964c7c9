"""The policy service: gathers evidence under a time bound, decides, remembers, logs.

:meth:`PolicyService.answer` gives the verdict for a destination and profile, the evidence
behind it and how long it holds (until the earliest expiry of that evidence). Evidence is
gathered once per destination however many lookups wait for it (one gathering in flight,
shared). A changed decision is logged and kept. The service speaks values: the socketmap
protocol and its reply cache are the server's (:mod:`policyd.server.reply_cache`), which
subscribes to the service to drop what a changed override, a flush or fresher evidence
makes stale.

Through a resolver outage (the DNS adapter's breaker is open) a destination that would now
get TEMP keeps its last answer decided from fresh evidence (:mod:`policyd.kept_answers`).
Events and kept answers leave through the write-behind queue, never on the answer's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from policyd.adapters.store import Store
from policyd.adapters.write_behind import WriteBehind
from policyd.alerts import AlertKind, Alerts
from policyd.codec import postfix_policy
from policyd.core.decide import decide
from policyd.core.event import Event
from policyd.core.evidence import Destination, Evidence, Override
from policyd.core.frozen import quick_init
from policyd.core.profile import Profile
from policyd.core.seconds import Seconds
from policyd.core.types import SPACED_ATTRS, Outcome, Policy, Rule, Verdict
from policyd.counters import ServiceCounters
from policyd.gathering import DaneSourceLike, Gathering, ProbeSourceLike, StsSourceLike
from policyd.held import HeldDestinations
from policyd.held import shared as _shared
from policyd.kept_answers import KEEP_ANSWERS_FOR, KEEP_REFRESH, kept_record, read_kept
from policyd.overrides import Overrides, under_parent
from policyd.settings import DEFAULT_MAX_DESTINATIONS
from policyd.told import as_sent, label_of

log = logging.getLogger("policyd")

# An answer holds at most this long even when all evidence lives longer, so that a
# changed world is noticed without a reload (seconds).
MAX_ANSWER_TTL: Final = 3600.0
# A TEMP answer holds only briefly: the cause (a dead resolver) may pass at any moment.
TEMP_ANSWER_TTL: Final = 5.0
# TEMP answers of these rules are a DNS(SEC) failure where DANE may apply (dane-temp alert).
_DANE_TEMP_RULES: Final = frozenset({Rule.DANE, Rule.DNS_FAILURE})


class AnswerCache(Protocol):
    """What keeps answers outside the service (the socketmap reply cache): told to drop
    them when they go stale (``None``: all), and how many it holds."""

    def invalidate(self, key: str | None) -> None: ...

    def __len__(self) -> int: ...


@quick_init
@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict  # as Postfix can be told it (see policyd.told.as_sent)
    evidence: Evidence
    ttl: float  # seconds it holds from when it was given; 0 or less: not to be cached
    kept: bool = False  # an earlier answer, kept through a resolver outage


class _Seen:
    """The latest verdict for a (profile, destination), and when it was last saved."""

    __slots__ = ("saved_at", "verdict")

    def __init__(self, verdict: Verdict, saved_at: float) -> None:
        self.verdict = verdict
        self.saved_at = saved_at


def _never() -> bool:
    return False


@dataclass(slots=True)
class Stats:
    lookups: int = 0
    hits: int = 0
    temp: int = 0
    perm: int = 0
    # Refreshes before expiry (policyd.server.prefetch): started, skipped at the limit, failed.
    prefetched: int = 0
    prefetch_skipped: int = 0
    prefetch_failed: int = 0


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
        dns_down: Callable[[], bool] = _never,
        max_destinations: int = DEFAULT_MAX_DESTINATIONS,
        alerts: Alerts | None = None,
        dane_temp_after: float = 0.0,
        fresh_dane: DaneSourceLike | None = None,
    ) -> None:
        self._profiles = {p.name: p for p in profiles}
        self.store = store
        self.dane = dane
        self.sts = sts
        self.probe = probe
        self.lookup_budget = lookup_budget
        self._clock = clock
        self._overrides = Overrides(store)
        # Every destination with a latest verdict or a cached reply, least recently used
        # first; only max_destinations of them (the bound on memory, shared with the
        # reply cache: see policyd.held).
        self.held = HeldDestinations(max_destinations, self._evict)
        self._caches: list[AnswerCache] = []
        self._verdicts: dict[Verdict, Verdict] = {}  # one copy of each, shared
        # Profile name -> destination key -> its latest verdict (one dict per profile: no
        # (profile, key) tuple per destination).
        self._last: dict[str, dict[str, _Seen]] = {p.name: {} for p in profiles}
        # Whole seconds as one float object for every verdict saved within that second.
        self._saved_second = Seconds()
        self._gathering = Gathering(dane, sts, probe, self._overrides, clock, fresh_dane=fresh_dane)
        self._dns_down = dns_down
        # Events and kept answers reach the store from here; the daemon runs writes.run().
        self.writes = WriteBehind(store)
        self.stats = Stats()
        self.counters = ServiceCounters()
        self.alerts = alerts or Alerts(log)
        self.dane_temp_after = dane_temp_after  # seconds; 0: no dane-temp alert
        self._temp_since: dict[str, float] = {}  # dest key -> first TEMP of this episode

    # -- configuration ---------------------------------------------------------------

    def set_profiles(self, profiles: tuple[Profile, ...]) -> None:
        self._profiles = {p.name: p for p in profiles}
        # a removed profile's verdicts would escape eviction
        self._last = {name: self._last.get(name, {}) for name in self._profiles}
        self.invalidate(None)

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return tuple(self._profiles.values())

    def profile(self, name: str) -> Profile | None:
        """The profile a socketmap map name asks for, if there is one."""
        return self._profiles.get(name)

    def subscribe(self, cache: AnswerCache) -> None:
        """Tell ``cache`` from now on which answers go stale (see :meth:`invalidate`)."""
        self._caches.append(cache)

    @property
    def remembered_count(self) -> int:
        """How many (profile, destination) latest verdicts are held: policyctl status."""
        return sum(len(by_key) for by_key in self._last.values())

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
        return sum(len(cache) for cache in self._caches)

    @property
    def cached_destinations(self) -> int:
        """Destinations held in memory: with a latest verdict or a cached reply (metrics)."""
        return len(self.held)

    @property
    def evicted(self) -> int:
        """Destinations forgotten at max_destinations, since start."""
        return self.held.evicted

    def invalidate(self, key: str | None) -> None:
        """Answers given for one destination key, or for all, are stale: every subscribed
        cache drops them (a changed override, a flush, fresher evidence, new profiles).
        A parent-form key (``.example.com``) also stands for every destination under it,
        which its override reaches (:mod:`policyd.overrides`): a scan, on admin changes."""
        keys = [key] if key is None or not key.startswith(".") else [key, *self._under(key)]
        for cache in self._caches:
            for each in keys:
                cache.invalidate(each)

    def _under(self, parent: str) -> list[str]:
        return [k for k in self.held.order if k.endswith(parent) and under_parent(k, parent)]

    def _touch(self, key: str) -> None:
        """Make ``key`` the most recently used destination held in memory."""
        self.held.touch(key)

    def _evict(self, key: str) -> None:
        """Forget a destination at the bound: its cached answers and latest verdicts (not
        its store records); its next lookup gathers fresh evidence."""
        self.invalidate(key)
        for seen_by_key in self._last.values():
            seen_by_key.pop(key, None)

    # -- deciding ----------------------------------------------------------------------

    async def answer(self, dest: Destination, profile: Profile, *, fresh: bool = False) -> Answer:
        """``fresh``: a refresh before expiry; its DNS asked again, not read from the cache."""
        now = self._clock()
        override = self._override(dest, now)
        if override is not None:
            # An override outranks all evidence: answer without gathering any.
            evidence = Evidence(dest, override=override)
            return self._finish(dest, profile, decide(evidence, profile, now), evidence)
        # The budget's timer, without asyncio.timeout's context manager: a third of its
        # cost, on every lookup that gathers evidence (what the former does, for one await).
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("PolicyService.answer runs in a task")
        expired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(self.lookup_budget, _expire, task, expired)
        try:
            gathered: Evidence | None = await self._gathering.evidence(dest, fresh=fresh)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > 0:
                raise  # cancelled by the caller, not (only) by the budget
            gathered = None
        finally:
            timer.cancel()
        if gathered is None:
            verdict = Verdict(
                Outcome.TEMP,
                Rule.DNS_FAILURE,
                f"lookup did not complete within {self.lookup_budget:g}s",
            )
            evidence = Evidence(dest)
        else:
            evidence = gathered
            verdict = decide(evidence, profile, self._clock())
        if verdict.outcome is Outcome.TEMP and self._dns_down():
            kept = await self._kept(dest, profile)
            if kept is not None:
                # held briefly: the outage may end any moment
                return Answer(kept, evidence, TEMP_ANSWER_TTL, kept=True)
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
            return seen.verdict if _keepable(seen.verdict) and fresh else None
        kept = await read_kept(self.store, dest.key, profile.name, now)
        return kept if kept is not None and _keepable(kept) else None

    def _finish(
        self, dest: Destination, profile: Profile, verdict: Verdict, evidence: Evidence
    ) -> Answer:
        verdict = as_sent(verdict)
        if verdict.outcome is Outcome.TEMP:
            self.stats.temp += 1
        self._watch_temp(dest, verdict)
        self._log_change(dest, profile, verdict)
        if profile.dry_run:
            # Decided, logged and counted as if live; Postfix keeps its own default.
            self.counters.dry_run.inc(profile.name, label_of(verdict))
        return Answer(verdict, evidence, self._ttl(verdict, evidence))

    def _ttl(self, verdict: Verdict, evidence: Evidence) -> float:
        """How long an answer holds: until the earliest expiry of its evidence."""
        if verdict.outcome is Outcome.TEMP:
            return TEMP_ANSWER_TTL
        now = self._clock()
        limits = [MAX_ANSWER_TTL]
        if evidence.dns is not None and evidence.dns.expires_at:
            limits.append(evidence.dns.expires_at - now)
        if evidence.sts.policy is not None:
            limits.append(evidence.sts.policy.expires_at - now)
        if evidence.sts.pending:
            limits.append(TEMP_ANSWER_TTL)
        if evidence.override is not None and evidence.override.expires_at is not None:
            limits.append(evidence.override.expires_at - now)
        return min(limits)

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
            if len(self._temp_since) >= self.held.limit:
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
        key = dest.key  # a property that builds the string: read once
        seen_by_key = self._last.setdefault(profile.name, {})
        now = self._clock()
        seen = seen_by_key.get(key)
        before = None if seen is None else seen.verdict
        if (
            seen is not None
            and seen.verdict.outcome is verdict.outcome
            and seen.verdict.policy == verdict.policy
        ):
            if verdict.outcome is not Outcome.TEMP and now - seen.saved_at > KEEP_REFRESH:
                seen.saved_at = self._saved_second(now)
                self._save_kept(key, now)
            return
        self._touch(key)
        if before is None and verdict.rule is Rule.NO_MAIL:
            # A name first seen not to take mail (NXDOMAIN, null MX) has no level to
            # change and nothing to keep through an outage (Postfix cannot deliver there
            # either). Written, a flood of such names (typos, backscatter to forged
            # domains) would push the real level changes out of the bounded event log and
            # fill the store; its first answer that takes mail is logged as its first.
            return
        # saved_at down to the second: a kept answer lives at most KEEP_ANSWERS_FOR.
        seen_by_key[key] = _Seen(_shared(self._verdicts, verdict), self._saved_second(now))
        event = Event(
            now,
            key,
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
        log.info("%s: level=%s%s%s reason=%s", key, event.level, shown, dry, event.reason)
        if before is not None:
            self._alert_if_weaker(dest, profile, before, verdict)
        self.writes.event(event)
        self._save_kept(key, now)

    def _save_kept(self, key: str, now: float) -> None:
        """Queue the record of the answers to keep for ``key``: every profile's latest
        verdict that is not TEMP (a TEMP from fresh evidence removes what was kept).
        Nothing is saved during an outage: a TEMP then says nothing new."""
        if self._dns_down():
            return
        kept = {}
        for name, seen_by_key in self._last.items():
            seen = seen_by_key.get(key)
            if seen is not None and _keepable(seen.verdict):
                kept[name] = seen.verdict
        self.writes.put(kept_record(key, kept, now))

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
        return self._overrides.active(dest.key, now)

    async def explain(self, dest: Destination) -> list[tuple[Profile, Verdict, Evidence]]:
        evidence = await self._gathering.evidence(dest)
        now = self._clock()
        return [(p, as_sent(decide(evidence, p, now)), evidence) for p in self._profiles.values()]

    # -- overrides and flushing --------------------------------------------------------

    @property
    def overrides(self) -> dict[str, Override]:
        """The overrides in memory, by destination key."""
        return self._overrides.by_key

    async def load_overrides(self) -> None:
        """(Re)read overrides from the store: at start, on SIGHUP, and periodically so that
        hosts sharing a Redis store see each other's overrides. Only changed keys lose
        their cached answers."""
        for key in await self._overrides.load():
            self.invalidate(key)

    async def set_override(self, ov: Override) -> None:
        await self._overrides.put(ov)
        self.invalidate(ov.key)

    async def delete_override(self, key: str) -> bool:
        found = await self._overrides.delete(key)
        self.invalidate(key)
        return found

    async def reload_override(self, key: str) -> None:
        """Read one override again (a fleet member set or deleted it); StoreError escapes."""
        if await self._overrides.reload(key):
            self.invalidate(key)

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        count = await self.store.flush(key, mta_sts=mta_sts)
        self.forget(key, mta_sts=mta_sts)
        return count

    def forget(self, key: str | None, *, mta_sts: bool = True) -> None:
        """Drop what memory holds for one key or all (a flush here or on a fleet member);
        cached MTA-STS policies only with ``mta_sts`` (trust on first use)."""
        self.invalidate(key)
        if key is None:
            for seen_by_key in self._last.values():
                seen_by_key.clear()
            self.held.order.clear()
        if mta_sts:
            self.sts.forget(key)
        self.probe.forget(key)

    def expire_overrides(self) -> None:
        """Drop expired overrides from memory (periodic housekeeping)."""
        for key in self._overrides.expire(self._clock()):
            self.invalidate(key)


def _keepable(verdict: Verdict) -> bool:
    """Kept through an outage: an answer decided from evidence. Not a TEMP, and not an
    override's: a deleted override's level (perhaps a weaker one the postmaster removed)
    must not outlive it."""
    return verdict.outcome is not Outcome.TEMP and verdict.rule is not Rule.OVERRIDE


def level_text(verdict: Verdict) -> str:
    if verdict.outcome is Outcome.TEMP or verdict.policy is None:
        return label_of(verdict)
    # One word for log lines and reports: without the policy_string lines (spaces inside),
    # which repeat the mx patterns for TLSRPT.
    pol = verdict.policy
    brief = Policy(pol.level, pol.match, tuple(a for a in pol.attrs if a[0] not in SPACED_ATTRS))
    return postfix_policy.render(brief).replace(" ", ",")


def _expire(task: asyncio.Task[Any], expired: list[bool]) -> None:
    """The end of a lookup's budget: cancel its task, noting that the budget did."""
    expired.append(True)
    task.cancel()
