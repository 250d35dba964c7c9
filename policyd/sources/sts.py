"""The MTA-STS source: discovery, fetch and a downgrade-proof cache (RFC 8461 3.3, 5.1).

A cached, unexpired policy is answered from memory at once; refreshes run in the
background. Nothing an attacker can do on the path (block DNS, block HTTPS, remove the TXT
record, serve a bad policy) removes a cached policy before its ``max_age``: only a
successfully fetched new policy replaces it, and only a fetched ``mode: none`` removes it.
Policies are persisted, so they survive restarts. Lookups for a domain without a cached
policy wait at most ``cold_budget`` for discovery and fetch, then answer "pending" while
the fetch finishes in the background. Discoveries and refreshes share a bounded,
prioritised queue (:mod:`policyd.sources.fetch_queue`): refreshes of cached policies
first, then discoveries a lookup waits for, then the rest, so slow domains cannot keep a
real one from being fetched on first contact.

A cached enforce policy matching none of the domain's MX hosts is checked for a new one at
once (:meth:`StsSource._check_mx`); wall-clock steps do not age cached policies
(:mod:`policyd.sources.clock_steps`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from policyd.adapters.dns import DnsAnswer
from policyd.adapters.https import FetchError
from policyd.adapters.store import Kind, Store
from policyd.codec.mtasts import (
    ParsedPolicy,
    StsGrammarError,
    StsTxtProblem,
    TxtProblemKind,
    discover,
    parse_policy,
)
from policyd.codec.records import sts_policy_from_json
from policyd.core.evidence import StsEvidence, StsMode, StsPolicy
from policyd.core.names import fold
from policyd.core.sts import any_mx_matches
from policyd.counters import StsCounters
from policyd.settings import StsSettings
from policyd.sources.clock_steps import ClockSteps, real_elapsed
from policyd.sources.dns import DnsQuery
from policyd.sources.fetch_queue import FetchQueue, FetchQueueFull, Lane, QueueStats
from policyd.sources.sts_absent import (
    TXT_PREFIX,
    AbsentDomains,
    nonexistent,
    shift_all,
    txt_of_new,
)
from policyd.sources.sts_state import (
    NEVER,
    DomainState,
    describe_policy,
    log_failure,
    log_mismatch,
    log_parsed,
    mx_names,
    persist,
    same_policy,
    unrefreshed,
)

__all__ = ["PolicyFetcherProtocol", "StsSettings", "StsSource"]

# Domains remembered as publishing no MTA-STS record (so that their TXT record is not read
# again before recheck_interval), by default; beyond it the oldest is forgotten and its
# next lookup reads the TXT record again (the daemon passes [server] max_destinations).
DEFAULT_MAX_ABSENT: Final = 1_000_000
DROPS_LOGGED_EVERY: Final = 100  # one log line per this many fetches dropped (queue full)
# A cached enforce policy is compared with the domain's MX hosts on a lookup at most this
# often, and so refetched for matching none at most this often, per domain (seconds).
MX_MISMATCH_RECHECK: Final = 300.0


class PolicyFetcherProtocol(Protocol):
    async def fetch(self, domain: str) -> bytes:
        """The policy body, or :class:`policyd.adapters.https.FetchError`."""
        ...


_NOTHING: Final = StsEvidence()
# A domain's job in the fetch queue: a refresh, or the MX comparison.
DomainWork = Callable[[str, DomainState], Awaitable[None]]


class StsSource:
    def __init__(
        self,
        store: Store,
        resolver: DnsQuery,
        fetcher: PolicyFetcherProtocol,
        settings: StsSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        elapsed: Callable[[], float] | None = None,
        log: logging.Logger | None = None,
        max_absent: int = DEFAULT_MAX_ABSENT,
    ) -> None:
        """``elapsed`` finds steps of ``clock`` (by default real_elapsed with the real
        wall clock, none with the caller's: a test's, moved by hand)."""
        self.settings = settings or StsSettings()
        self._store = store
        self._resolver = resolver
        self._fetcher = fetcher
        self._clock = clock
        if elapsed is None and clock is time.time:
            elapsed = real_elapsed
        self._steps = None if elapsed is None else ClockSteps(clock, elapsed)
        self._log = log or logging.getLogger("policyd.sts")
        self._domains: dict[str, DomainState] = {}
        self._absent = AbsentDomains(max_absent)
        self._fetches = FetchQueue(
            self.settings.max_concurrent_fetches, self.settings.max_queued_fetches
        )
        self.counters = StsCounters()
        # Called with the domain whenever its cached policy appears, changes or goes, so
        # the service can drop answers it built from the old one.
        self.on_change: Callable[[str | None], None] | None = None

    # -- start-up and housekeeping ---------------------------------------------------------

    async def load(self) -> None:
        """Read persisted policies (a StoreError propagates: without them the daemon would
        be open to the downgrade the cache exists to prevent)."""
        now = self._now()
        loaded = 0
        for rec in await self._store.scan(Kind.STS):
            try:
                policy = sts_policy_from_json(rec.value)
            except ValueError as exc:
                self._log.warning("%s: ignoring unreadable mta-sts record: %s", rec.key, exc)
                continue
            if policy.mode is StsMode.NONE or not policy.valid_at(now):
                continue
            self._entry(fold(rec.key)).last = policy
            loaded += 1
        self._log.info("mta-sts: loaded %d cached policies", loaded)

    async def refresh_due(self) -> int:
        """Start a background refresh of every cached policy that is due, and drop what
        memory no longer needs. Returns the number of refreshes started."""
        now = self._now()
        started = 0
        for domain, entry in list(self._domains.items()):
            policy = entry.policy(now)
            if policy is not None:
                if self._refresh_due(entry, policy, now, recheck=False):
                    self._start(domain, entry, Lane.REFRESH)
                    started += 1
            elif not entry.running and now >= entry.absent_until and self._may_try(entry, now):
                del self._domains[domain]  # nothing cached, no throttle left to remember
        self._absent.expire(now)
        return started

    async def wait_idle(self) -> None:
        """Wait for every queued or running discovery and fetch (tests, shutdown)."""
        jobs = [e.job for e in self._domains.values() if e.job is not None]
        if jobs:
            await asyncio.wait(jobs)

    def forget(self, domain: str | None) -> None:
        """``policyctl flush``: drop what is known about a domain (None: every domain)."""
        if domain is None:
            self._absent.clear()
        else:
            self._absent.pop(fold(domain), None)
        doomed = list(self._domains) if domain is None else [fold(domain)]
        for name in doomed:
            entry = self._domains.pop(name, None)
            if entry is not None and entry.job is not None:
                entry.job.cancel()

    def _now(self) -> float:
        """The wall clock, after moving the times held by any step it took."""
        if self._steps is not None and (step := self._steps.step()):
            shift_all(self._log, step, self._domains.values(), self._absent)
        return self._clock()

    def queue_stats(self) -> QueueStats:
        """The fetch queue's figures (``policyctl status``)."""
        return self._fetches.stats()

    # -- the lookup path -------------------------------------------------------------------

    def cached(self, domain: str, now: float) -> StsEvidence:
        """From memory only, never awaits."""
        self._now()  # a step of the wall clock: held times moved first
        entry = self._domains.get(fold(domain))
        if entry is None:
            return _NOTHING  # unknown, or known to publish no record
        return self._evidence(entry, now)

    async def evidence(self, domain: str) -> StsEvidence:
        domain = fold(domain)
        now = self._now()
        entry = self._domains.get(domain)
        budget, work = self.settings.cold_budget, None
        if entry is None:
            if self._absent.holds(domain, now):
                return _NOTHING
            asked_at = time.monotonic()
            txt = await txt_of_new(self._resolver, domain)
            if txt is None:  # publishes nothing: remembered, no job
                if domain not in self._domains:  # else that entry, newer, stands
                    self._absent.remember(domain, self._now(), self.settings.recheck_interval)
                return _NOTHING
            budget -= time.monotonic() - asked_at  # the DNS waits count against the budget
            work = functools.partial(self._refresh, txt=txt)  # MX and TXT not asked again
            entry = self._domains.get(domain)  # one may have appeared meanwhile
        if entry is not None:
            policy = entry.policy(now)
            if policy is not None:
                if self._refresh_due(entry, policy, now, recheck=True):
                    self._start(domain, entry, Lane.REFRESH)
                elif self._mx_check_due(entry, policy, now):
                    entry.mx_checked_at = now
                    self._start(domain, entry, Lane.REFRESH, self._check_mx)
                return self._evidence(entry, now)
            if not entry.running and not self._discovery_due(entry, now):
                return self._evidence(entry, now)
        entry = entry or self._entry(domain)
        job = self._start(domain, entry, Lane.WAITED, work)
        # Wait on the shared job without cancelling it: concurrent lookups join one fetch,
        # and one that outlives the budget still lands in the cache, as background work.
        entry.waiters += 1
        try:
            await asyncio.wait({job}, timeout=max(0.0, budget))
        finally:
            entry.waiters -= 1
            if not entry.waiters and not job.done():
                self._fetches.demote(domain)
        return self.cached(domain, self._now())

    def _evidence(self, entry: DomainState, now: float) -> StsEvidence:
        policy = entry.policy(now)
        unknown = entry.running or entry.refused
        return StsEvidence(policy, entry.error, pending=policy is None and unknown)

    def _stale(self, policy: StsPolicy, now: float) -> bool:
        """Due for a refetch: older than refresh_interval or past half its lifetime."""
        age = now - policy.fetched_at
        return age >= min(self.settings.refresh_interval, policy.max_age / 2)

    def _may_try(self, entry: DomainState, now: float) -> bool:
        return now - entry.failed_at >= self.settings.retry_after_failure

    def _refresh_due(
        self, entry: DomainState, policy: StsPolicy, now: float, *, recheck: bool
    ) -> bool:
        """A cached policy wants a refresh when stale (but a stale policy whose TXT record
        is gone is looked at again only after retry_after_failure) or, on the lookup path,
        when its TXT id has not been checked for recheck_interval."""
        return not entry.running and self._due(entry, policy, now, recheck=recheck)

    def _due(self, entry: DomainState, policy: StsPolicy, now: float, *, recheck: bool) -> bool:
        if not self._may_try(entry, now):
            return False
        since_check = now - entry.checked_at
        if self._stale(policy, now) and since_check >= self.settings.retry_after_failure:
            return True
        return recheck and since_check >= self.settings.recheck_interval

    def _mx_check_due(self, entry: DomainState, policy: StsPolicy, now: float) -> bool:
        return (
            policy.mode is StsMode.ENFORCE
            and not entry.running
            and now - entry.mx_checked_at >= MX_MISMATCH_RECHECK
            and self._may_try(entry, now)
        )

    def _discovery_due(self, entry: DomainState, now: float) -> bool:
        return self._may_try(entry, now) and now >= entry.absent_until

    def _entry(self, domain: str) -> DomainState:
        entry = self._domains.get(domain)
        if entry is None:
            self._absent.pop(domain, None)
            entry = self._domains[domain] = DomainState()
        return entry

    def _compact(self, domain: str, entry: DomainState) -> None:
        """Keep a domain that publishes no record as one float in ``_absent`` instead of
        an entry, when that float is all there is to remember about it."""
        if not entry.only_absence or self._domains.get(domain) is not entry:
            return
        del self._domains[domain]
        self._absent.add(domain, entry.absent_until)

    def _start(
        self, domain: str, entry: DomainState, lane: Lane, work: DomainWork | None = None
    ) -> asyncio.Future[None]:
        """Queue ``work(domain, entry)`` (by default a refresh) as the domain's job."""
        job = self._fetches.submit(
            domain, lane, functools.partial(work or self._refresh, domain, entry)
        )
        if entry.job is not job:
            entry.job = job
            entry.refused = False
            if job.done():  # refused at once: say so to the lookup asking now
                self._finished(domain, entry, job)
            else:
                job.add_done_callback(functools.partial(self._finished, domain, entry))
        return job

    def _finished(self, domain: str, entry: DomainState, job: asyncio.Future[None]) -> None:
        if entry.job is job:
            entry.job = None
        if job.cancelled():
            return
        exc = job.exception()
        if exc is None:
            self._compact(domain, entry)
            return
        if isinstance(exc, FetchQueueFull):
            # Not a failure of the domain: the policy is not known yet (pending: short-lived
            # answers, TEMP in sts_cold = "TEMP" profiles), and the next lookup asks again.
            entry.refused = True
            entry.error = f"not fetched: {exc}"
            dropped = self._fetches.stats().dropped
            if dropped % DROPS_LOGGED_EVERY == 1:
                self._log.warning("%s: mta-sts %s (%d so far)", domain, entry.error, dropped)
            return
        # A bug, not an expected failure: report it, and hold off like after a failure.
        entry.failed_at = self._now()
        entry.error = f"internal error: {type(exc).__name__}"
        self._log.error("%s: mta-sts refresh crashed: %r", domain, exc)

    # -- discovery and fetch ---------------------------------------------------------------

    async def _check_mx(self, domain: str, entry: DomainState) -> None:
        """Refresh now, fetching whatever the id, when the cached enforce policy matches
        none of the domain's MX hosts: it moved its mail, perhaps without a new id (RFC
        8461 5.1: check for a new policy before failing; review D16). The cached policy
        answers meanwhile. The MX query is the DNS source's (shared by the resolver)."""
        hosts = mx_names(domain, await self._resolver.query(domain, "MX"))
        now = self._now()
        policy = entry.policy(now)
        if policy is not None and hosts and not any_mx_matches(policy, hosts):
            log_mismatch(self._log, domain, hosts, policy)
            await self._refresh(domain, entry, force=True)
        elif policy is not None and self._due(entry, policy, now, recheck=True):
            await self._refresh(domain, entry)  # came due while this job ran

    async def _refresh(
        self,
        domain: str,
        entry: DomainState,
        *,
        force: bool = False,
        txt: DnsAnswer | None = None,
    ) -> None:
        """Read the TXT record (unless given); fetch the policy when new, stale or forced."""
        texts: tuple[str, ...] = ()
        if txt is None and (
            entry.last is not None or not await nonexistent(self._resolver, domain)
        ):
            txt = await self._resolver.query(TXT_PREFIX + domain, "TXT")
        if txt is not None:
            if txt.failed:
                self._fail(domain, entry, self._now(), f"TXT lookup failed: {txt.error}")
                return
            texts = txt.texts
        now = self._now()
        found = discover(texts)  # NXDOMAIN or NODATA: no records, no policy
        if isinstance(found, StsTxtProblem):
            # No usable record: no policy to discover, but a cached one stays until its
            # max_age (RFC 8461 5.1), so removing the record cannot downgrade us.
            entry.checked_at = now
            entry.absent_until = self._absent.until(now, self.settings.recheck_interval)
            entry.error = "" if found.kind is TxtProblemKind.NONE else found.detail
            if entry.error:
                self._log.warning("%s: mta-sts %s", domain, entry.error)
            # [sts] refresh_without_txt (review D15): a stale one is fetched under its id.
            kept = entry.policy(now) if self.settings.refresh_without_txt else None
            if kept is None or not (force or self._stale(kept, now)):
                return
            policy_id = kept.policy_id
        else:
            policy_id = found.policy_id
        last = entry.last
        if (
            not force
            and last is not None
            and last.policy_id == policy_id
            and last.valid_at(now)
            and not self._stale(last, now)
        ):
            entry.checked_at = now  # unchanged id, fresh enough: nothing to fetch
            entry.error = ""
            return
        self.counters.fetches += 1
        try:
            body = await self._fetcher.fetch(domain)
            parsed = parse_policy(body, domain, self._now())
            policy = parsed.policy(policy_id)
        except FetchError as exc:
            self.counters.fetch_failures += 1
            self._fail(domain, entry, now, f"policy fetch failed: {exc.reason}")
            return
        except StsGrammarError as exc:
            self.counters.fetch_failures += 1
            self._fail(domain, entry, now, f"invalid policy: {exc}")
            return
        entry.checked_at = now
        entry.failed_at = NEVER
        entry.error = ""
        # Shielded: a preempted (cancelled) job must not stop a policy half installed.
        await asyncio.shield(self._install(domain, entry, parsed, policy))

    def _fail(self, domain: str, entry: DomainState, now: float, reason: str) -> None:
        """Keep any cached policy until its max_age (RFC 8461 5.1); remember why."""
        entry.failed_at = now
        entry.error = reason
        kept = entry.policy(now)
        if kept is not None:
            self.counters.refresh_failures += 1
        log_failure(self._log, domain, reason, kept, now)

    async def _install(
        self, domain: str, entry: DomainState, parsed: ParsedPolicy, policy: StsPolicy
    ) -> None:
        now = self._now()
        before = entry.policy(now)
        changed = not same_policy(entry.last, policy)
        entry.last = policy
        log_parsed(self._log, domain, parsed, policy)
        if policy.mode is StsMode.NONE:
            entry.absent_until = now + self.settings.recheck_interval
            if changed:
                removed = "; cached policy removed" if before is not None else ""
                self._log.info("%s: mta-sts policy %s%s", domain, describe_policy(policy), removed)
            await persist(self._store, self._log, domain, None)
        else:
            entry.absent_until = NEVER
            if changed:
                self._log.info("%s: mta-sts policy %s", domain, describe_policy(policy))
            await persist(self._store, self._log, domain, policy)
        if (before is None) != (entry.policy(now) is None) or changed:
            self._notify(domain)

    # -- for metrics and alerts -------------------------------------------------------------

    def cached_policies(self, now: float) -> int:
        """Domains with a cached policy in force (mode enforce or testing)."""
        return sum(1 for entry in self._domains.values() if entry.policy(now) is not None)

    def unrefreshed(self, now: float, older_than: float) -> list[tuple[str, float, str]]:
        """See :func:`policyd.sources.sts_state.unrefreshed`."""
        return unrefreshed(self._domains, now, older_than)

    def _notify(self, domain: str) -> None:
        if self.on_change is not None:
            self.on_change(domain)
