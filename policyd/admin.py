"""The control plane's operations, typed: what ``policyctl`` and policyd-milter can ask of
the running daemon, at the service layer.

:class:`Admin` works over explicit collaborators (the :class:`~policyd.service.PolicyService`,
the DNS, MTA-STS and probe sources, the store's event log, a ``reload`` callable, the
socketmap listener's counters) and returns the typed results of
:mod:`policyd.codec.control.results`. Transport, authorisation and the audit log lines live
in :mod:`policyd.server.control`, which dispatches each request to one method here.
Failures the postmaster can act on are an :class:`AdminError` with a protocol error code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from policyd import __version__
from policyd.codec import socketmap
from policyd.codec.control import ErrorCode
from policyd.codec.control.evidence import DnsDoc, OverrideDoc, ProbeDoc, StsDoc
from policyd.codec.control.report import (
    DryRunDoc,
    ReportResult,
)
from policyd.codec.control.results import (
    CacheCounts,
    Checked,
    ExplainResult,
    FetchQueueCounts,
    FleetCounts,
    Flushed,
    LookupCounts,
    OverrideDeleted,
    Overrides,
    PrefetchCounts,
    ProbeQueueCounts,
    ProbeQueued,
    Reloaded,
    StatusResult,
    VerdictRow,
    Warmed,
)
from policyd.config import Config
from policyd.core import feasibility
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
from policyd.core.report import Report, ReportLimits, build_report
from policyd.core.types import Policy, Verdict
from policyd.service import PolicyService, level_text
from policyd.singleflight import SingleFlight, TaskSet
from policyd.sources.fetch_queue import QueueStats
from policyd.sources.probe import ProbeStats

if TYPE_CHECKING:
    from policyd.adapters.fleet_redis import RedisFleet  # redis-py: optional

log = logging.getLogger("policyd")

MAX_REPORT_CHANGES: Final = 1000  # newest level changes a report lists
MAX_REPORT_NAMES: Final = 1000  # destinations listed per level, held, TEMP, STS failures
# Background lookups started by `warm` (policyd-milter) at once; beyond it a warm request
# is skipped: a flood of recipients must not turn into a flood of DNS, HTTPS and probes.
MAX_WARM_TASKS: Final = 256
DEFAULT_PROFILE: Final = "postfix"  # the profile `warm` and `check` decide for


class AdminError(Exception):
    """A failure the postmaster can act on, with the protocol's error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the collaborators, as the control plane sees them ----------------------------------


class DnsGatherer(Protocol):
    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence: ...


class Prober(Protocol):
    """policyd/sources/probe.py's ProbeSource."""

    def cached(self, key: str) -> ProbeState | None: ...
    async def probe_now(self, dest: Destination, dns: DnsEvidence) -> ProbeState: ...

    def stats(self) -> ProbeStats: ...


class StsView(Protocol):
    """policyd/sources/sts.py's StsSource."""

    def cached(self, domain: str, now: float) -> StsEvidence: ...
    def queue_stats(self) -> QueueStats: ...


class EventLog(Protocol):
    async def events(self, since: float) -> list[Event]: ...


class ListenerStats(Protocol):
    @property
    def connections(self) -> int: ...
    @property
    def refused(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``status`` shows of the configuration read at start."""

    listeners: tuple[str, ...]  # the socketmap listeners and the control socket
    store: str  # the store URL's scheme
    started_at: float  # on the ``monotonic`` clock given to Admin

    @classmethod
    def of(cls, config: Config, started_at: float) -> Facts:
        listeners = tuple(str(x) for x in (*config.server.socketmap, config.server.control))
        return cls(listeners, config.store.url.partition("://")[0], started_at)


class Admin:
    def __init__(
        self,
        service: PolicyService,
        *,
        dane: DnsGatherer,
        sts: StsView,
        probe: Prober,
        events: EventLog,
        reload: Callable[[], Awaitable[bool]],
        clear_dns: Callable[[], None],
        facts: Facts,
        listeners: ListenerStats | None = None,
        fleet: RedisFleet | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._dane = dane
        self._sts = sts
        self._probe = probe
        self._events = events
        self._reload = reload
        self._clear_dns = clear_dns
        self._facts = facts
        self._listeners = listeners
        self._fleet = fleet
        self._clock = clock
        self._monotonic = monotonic
        self._background = TaskSet(log)
        self._warming: SingleFlight[str, object] = SingleFlight()
        self._reporting = asyncio.Lock()  # one report built at a time (report)

    async def close(self) -> None:
        """Cancel the background probes and lookups (shutdown)."""
        self._warming.cancel_all()
        await self._background.cancel_all()

    # -- reading ---------------------------------------------------------------------------

    async def explain(self, dest: Destination) -> ExplainResult:
        rows = await self._service.explain(dest)
        evidence = rows[0][2] if rows else Evidence(dest)
        now = self._clock()
        return ExplainResult(
            dest.key,
            now,
            tuple(_verdict_row(p, v) for p, v, _ev in rows),
            DnsDoc.of(evidence.dns, now),
            StsDoc.of(evidence.sts, now),
            ProbeDoc.of(evidence.probe, now),
            None if evidence.override is None else OverrideDoc.of(evidence.override, now),
        )

    async def check(self, dest: Destination) -> Checked:
        """The verdict Postfix gets now and, if it cannot be met, why (policyd-milter)."""
        service = self._service
        profile = self._default_profile()
        answer = await service.answer(dest, profile)
        evidence = answer.evidence
        if evidence.override is not None and evidence.dns is None:
            # An override answers without evidence; judging it needs DNS and the probe.
            try:
                async with asyncio.timeout(service.lookup_budget):
                    rows = await service.explain(dest)
                evidence = rows[0][2] if rows else evidence
            except TimeoutError:
                pass
        if evidence.probe is None:
            evidence = dataclasses.replace(evidence, probe=self._probe.cached(dest.key))
        verdict = answer.verdict
        # A dry-run profile enforces nothing: nothing for the milter to act on.
        problem = None if profile.dry_run else feasibility.problem(verdict, evidence, self._clock())
        return Checked(dest.key, level_text(verdict), verdict.rule.value, verdict.reason, problem)

    def overrides(self) -> Overrides:
        now = self._clock()
        ovs = sorted(self._service.overrides.values(), key=lambda o: o.key)
        return Overrides(tuple(OverrideDoc.of(o, now) for o in ovs))

    def status(self) -> StatusResult:
        service, facts, listeners = self._service, self._facts, self._listeners
        stats, probe, sts = service.stats, self._probe.stats(), self._sts.queue_stats()
        return StatusResult(
            version=__version__,
            uptime=round(self._monotonic() - facts.started_at, 1),
            listeners=facts.listeners,
            store=facts.store,
            connections=None if listeners is None else listeners.connections,
            refused=None if listeners is None else listeners.refused,
            cache=CacheCounts(
                service.cached_answers, service.remembered_count, len(service.overrides)
            ),
            lookups=LookupCounts(stats.lookups, stats.hits, stats.temp, stats.perm),
            prefetch=PrefetchCounts(
                stats.prefetched, stats.prefetch_skipped, stats.prefetch_failed
            ),
            probe=ProbeQueueCounts(
                probe.queued, probe.running, probe.dropped, probe.done, probe.known
            ),
            mta_sts=FetchQueueCounts(sts.running, sts.queued, sts.dropped, sts.preempted),
            fleet=None if self._fleet is None else _fleet_counts(self._fleet),
        )

    # -- acting ----------------------------------------------------------------------------

    async def set_override(
        self, dest: Destination, policy: Policy, expires: float | None, comment: str, author: str
    ) -> OverrideDoc:
        """``expires``: seconds from now, None for never."""
        now = self._clock()
        ov = Override(
            key=dest.key,
            policy=policy,
            expires_at=None if expires is None else now + expires,
            comment=comment,
            author=author,
            created_at=now,
        )
        await self._service.set_override(ov)
        return OverrideDoc.of(ov, now)

    async def delete_override(self, dest: Destination) -> OverrideDeleted:
        if not await self._service.delete_override(dest.key):
            raise AdminError(ErrorCode.NOTFOUND, f"no override for {dest.key}")
        return OverrideDeleted(dest.key)

    async def flush(self, dest: Destination | None, *, mta_sts: bool) -> Flushed:
        key = None if dest is None else dest.key
        count = await self._service.flush(key, mta_sts=mta_sts)
        self._clear_dns()  # the next lookup starts from fresh DNS answers
        return Flushed(key, count, mta_sts)

    async def reload(self) -> Reloaded:
        if not await self._reload():
            raise AdminError(
                ErrorCode.INTERNAL, "reload failed, old configuration kept: see the policyd log"
            )
        return Reloaded()

    async def probe_now(self, dest: Destination) -> ExplainResult:
        """Probe ``dest``'s MX hosts now and explain it with the new evidence."""
        await self._probe_once(dest)
        return await self.explain(dest)

    def probe_soon(self, dest: Destination) -> ProbeQueued:
        """Probe in the background; the answer does not wait for it."""
        self._background.spawn(self._probe_logged(dest), name=f"probe {dest.key}")
        return ProbeQueued(dest.key)

    async def _probe_logged(self, dest: Destination) -> None:
        try:
            await self._probe_once(dest)
        except AdminError as exc:
            log.warning("control: probe: %s", exc.message)

    async def _probe_once(self, dest: Destination) -> None:
        dns = await self._dane.gather(dest, self._clock())
        if not dns.hosts:
            raise AdminError(
                ErrorCode.NOTFOUND, f"{dest.key}: no MX host to probe ({dns.kind.value})"
            )
        await self._probe.probe_now(dest, dns)
        self._service.invalidate(dest.key)

    def warm(self, dests: Sequence[Destination]) -> Warmed:
        """Start a lookup per destination and answer at once: the milter must not wait."""
        profile = self._default_profile()
        scheduled = 0
        for dest in dests:
            if dest.key in self._warming or len(self._warming) >= MAX_WARM_TASKS:
                continue
            lookup = functools.partial(self._service.answer, dest, profile)
            task = self._warming.task(dest.key, lookup)
            task.add_done_callback(functools.partial(_warm_done, dest.key))
            scheduled += 1
        return Warmed(scheduled, len(dests))

    def _default_profile(self) -> Profile:
        profiles = self._service.profiles
        for p in profiles:
            if p.name == DEFAULT_PROFILE:
                return p
        return profiles[0]

    # -- report: level changes and where each destination stands ------------------------

    async def report(self, since_seconds: float) -> ReportResult:
        """The report, built off the event loop (security review L7): over up to a million
        verdicts, sorting and grouping take seconds that lookups must not wait. What the
        loop does is take the snapshots (the latest verdicts as a fresh dict of immutable
        values, the dry-run counts); the worker thread reads probe and MTA-STS state only
        through ``cached()``, single dictionary reads. One report at a time, so one
        snapshot is held however many readers ask."""
        service = self._service
        now = self._clock()
        since = now - since_seconds
        await service.writes.flush()  # events still queued for the store count too
        events = await self._events.events(since)
        async with self._reporting:
            latest = service.remembered()
            dry = frozenset(p.name for p in service.profiles if p.dry_run)
            counted = tuple((labels, n) for labels, n in service.counters.dry_run.items())
            sts = self._sts

            def build() -> tuple[Report, dict[str, DryRunDoc]]:
                report = build_report(
                    events,
                    latest,
                    since=since,
                    now=now,
                    limits=ReportLimits(changes=MAX_REPORT_CHANGES, names=MAX_REPORT_NAMES),
                    level_of=level_text,
                    probe_of=self._probe.cached,
                    sts_of=lambda domain: sts.cached(domain, now),
                )
                return report, dry_run_docs(latest, dry, counted)

            report, dry_run = await asyncio.to_thread(build)
        return ReportResult.of(report, temp_answers=service.stats.temp, dry_run=dry_run)


# -- helpers ------------------------------------------------------------------------------


def _verdict_row(profile: Profile, verdict: Verdict) -> VerdictRow:
    # The service's explain has already put each verdict through as_sent.
    reply = socketmap.reply_for(verdict).decode("utf-8", "replace").rstrip()
    rule, reason = verdict.rule.value, verdict.reason
    if profile.dry_run:
        # Postfix is told NOTFOUND; the decision is what it would be told.
        return VerdictRow(profile.name, level_text(verdict), "NOTFOUND", rule, reason, reply)
    return VerdictRow(profile.name, level_text(verdict), reply, rule, reason)


def _fleet_counts(fleet: RedisFleet) -> FleetCounts:
    c = fleet.counters
    work = {kind: dict(counts) for kind, counts in c.work.items()}
    return FleetCounts(fleet.state, work, c.published, c.received, c.publish_failures)


def _warm_done(key: str, task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("control: warming %s failed: %r", key, task.exception())


def dry_run_docs(
    latest: Mapping[tuple[str, str], Verdict],
    dry: frozenset[str],
    counted: Sequence[tuple[tuple[str, ...], int]],
) -> dict[str, DryRunDoc]:
    """Per dry-run profile in ``dry``: what Postfix would have been told instead of
    NOTFOUND, destination by destination (the latest decision), and the answers counted
    (``counted``: (profile, level) labels and counts)."""
    would: dict[str, dict[str, list[str]]] = {name: {} for name in sorted(dry)}
    for (profile, key), verdict in sorted(latest.items()):
        if profile not in dry:
            continue
        level = level_text(verdict)
        if level == "NOTFOUND":
            continue  # what Postfix got anyway: no change
        names = would[profile].setdefault(level, [])
        if len(names) < MAX_REPORT_NAMES:
            names.append(key)
    answers: dict[str, dict[str, int]] = {name: {} for name in sorted(dry)}
    for (profile, level), count in counted:
        if profile in answers:
            answers[profile][level] = count
    return {
        name: DryRunDoc({lv: tuple(ks) for lv, ks in would[name].items()}, answers[name])
        for name in sorted(dry)
    }
