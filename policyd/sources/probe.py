"""The STARTTLS probe scheduler: which destinations to probe, when, and what it means.

Lookups ask for a probe with :meth:`ProbeSource.want`, which never blocks: the request
joins a bounded queue (a full queue drops it and counts the drop) unless the destination
was probed recently or is already waiting. A pool of workers probes the most preferred MX
hosts, folds the findings into the damped state (:func:`policyd.core.probe.advance`) and
persists it under ``Kind.PROBE``. Lookups read the state from memory (:meth:`cached`).

Politeness: an MX host shared by many domains is probed at most once per
``host_min_interval`` (later domains reuse the findings), and a destination with nothing
reachable is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from policyd.adapters.certverify import load_roots
from policyd.adapters.helo import default_helo_name
from policyd.adapters.smtp_probe import probe_host
from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.codec.records import probe_state_from_json, probe_state_to_json
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    ProbeHost,
    ProbeState,
)
from policyd.core.names import fold
from policyd.core.probe import Damping, advance, observed_level
from policyd.core.reach import Reach
from policyd.core.types import SMTP_PORT
from policyd.counters import ProbeCounters
from policyd.settings import ProbeSettings
from policyd.singleflight import SingleFlight

# Probes one MX host on a port (that of the destination's next hop).
Prober = Callable[[MxHost, int], Awaitable[list[ProbeHost]]]

MAX_BACKOFF_DOUBLINGS: Final = 32  # 2**32 x backoff_initial is past any backoff_max
MAX_HOSTS_IN_LOG: Final = 6  # addresses listed per log line
# Destinations with probe evidence kept in memory at most: beyond it, prune() forgets the
# longest-unprobed (their stored copies stay until they expire).
MAX_STATES: Final = 1_000_000
# RFC 8314 3.3: submissions speaks TLS from the first byte (smtp_tls_wrappermode); there
# is no STARTTLS to probe, and a STARTTLS probe would only time out.
SUBMISSIONS_PORT: Final = 465


@dataclass(frozen=True, slots=True)
class ProbeStats:
    queued: int  # waiting in the queue
    running: int  # being probed now
    dropped: int  # requests refused because the queue was full, since start
    done: int  # queued probes finished, since start
    known: int  # destinations with probe evidence in memory


@dataclass(frozen=True, slots=True)
class _Job:
    dest: Destination
    dns: DnsEvidence
    mx_changed: bool = False  # probe even if not due: the MX hosts are not those probed


def make_prober(
    settings: ProbeSettings,
    ca_file: str,
    clock: Callable[[], float] = time.time,
    *,
    reach: Reach,
) -> Prober:
    """The real prober: STARTTLS to each address of an MX host that ``reach`` allows,
    chains judged against ``ca_file`` (read once here: OSError or ValueError when
    unusable)."""
    roots = load_roots(ca_file)
    helo_name = settings.helo_name or default_helo_name()
    timeouts = settings.timeouts

    async def prober(mx: MxHost, port: int) -> list[ProbeHost]:
        return await probe_host(
            mx,
            port=port,
            roots=roots,
            timeouts=timeouts,
            helo_name=helo_name,
            now=clock,
            reach=reach,
        )

    return prober


class ProbeSource:
    def __init__(
        self,
        store: Store,
        prober: Prober,
        settings: ProbeSettings = ProbeSettings(),
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._prober = prober
        self.settings = settings
        self._damping = Damping(settings.confirm_probes, settings.confirm_seconds)
        self._clock = clock
        self._log = log or logging.getLogger(__name__)
        self.on_change: Callable[[str], None] | None = None
        self._states: dict[str, ProbeState] = {}
        self._due: dict[str, float] = {}  # key -> earliest time of its next probe
        self._failures: dict[str, int] = {}  # key -> rounds in a row with nothing reachable
        self._waiting: set[str] = set()  # keys queued or being probed by a worker
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.queue_size)
        self._inflight: SingleFlight[str, ProbeState] = SingleFlight()  # one probe per key
        # One probe per MX host and port ("name:port"), shared by the destinations using it.
        self._host_tasks: SingleFlight[str, list[ProbeHost]] = SingleFlight()
        self._recent: dict[str, tuple[float, list[ProbeHost]]] = {}  # MX host -> findings
        self._running = 0
        self._dropped = 0
        self.counters = ProbeCounters()
        self._done = 0

    async def load(self) -> None:
        """Read the stored states; unreadable or expired records are skipped. StoreError
        escapes: without its store the daemon should not start."""
        now = self._clock()
        for record in await self._store.scan(Kind.PROBE):
            if record.expires_at is not None and record.expires_at <= now:
                continue
            try:
                state = probe_state_from_json(record.value)
            except ValueError as exc:
                self._log.warning("%s: stored probe result ignored: %s", record.key, exc)
                continue
            self._states[record.key] = state
            self._due[record.key] = state.probed_at + self._interval(state, reachable=True)

    def cached(self, key: str) -> ProbeState | None:
        return self._states.get(key)

    def want(self, dest: Destination, dns: DnsEvidence) -> bool:
        """Queue a probe of ``dest`` unless one is waiting or not yet due; never blocks.
        Returns whether a probe was queued."""
        key = dest.key
        if not self.settings.enabled or dest.parent_form or dest.is_address:
            return False
        if dest.port == SUBMISSIONS_PORT or key in self._waiting:
            return False
        targets = self._targets(dns)
        if not targets:
            return False
        changed = self._mx_changed(key, targets)
        if self._clock() < self._due.get(key, 0.0) and not changed:
            return False
        try:
            self._queue.put_nowait(_Job(dest, dns, changed))
        except asyncio.QueueFull:
            self._dropped += 1
            return False
        self._waiting.add(key)
        return True

    async def probe_now(self, dest: Destination, dns: DnsEvidence) -> ProbeState:
        """Probe at once, whatever is due (``policyctl probe --wait``); a probe of the same
        destination already running is joined. Nothing to probe: the state as it is."""
        if not self._targets(dns):
            return self._states.get(dest.key) or ProbeState(level=None)
        return await self._shared_probe(dest, dns, fresh=True)

    async def run(self) -> None:
        """The worker pool; runs until cancelled, and then stops the probes it shared."""
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.settings.concurrency):
                    group.create_task(self._worker())
        finally:
            # Shielded shared probes outlive their askers; at shutdown they must not
            # outlive the store they would write to.
            self._inflight.cancel_all()
            self._host_tasks.cancel_all()

    async def join(self) -> None:
        """Wait until every queued probe is done."""
        await self._queue.join()

    def stats(self) -> ProbeStats:
        return ProbeStats(
            queued=self._queue.qsize(),
            running=self._running,
            dropped=self._dropped,
            done=self._done,
            known=len(self._states),
        )

    def held_back(self) -> int:
        """Destinations whose weaker probe result damping holds back now (metrics)."""
        return sum(1 for state in self._states.values() if state.pending is not None)

    def forget(self, key: str | None) -> None:
        """Drop what memory holds for ``key``, or for every key with None, the recent
        per-host findings included (the store is flushed by its owner)."""
        if key is None:
            self._states.clear()
            self._due.clear()
            self._failures.clear()
            self._recent.clear()
            return
        self._states.pop(key, None)
        self._due.pop(key, None)
        self._failures.pop(key, None)

    def prune(self) -> int:
        """Forget states older than ``retention`` (their stored copies expire with them),
        the oldest beyond MAX_STATES, and schedules left without a state (housekeeping).
        Returns how many destinations were forgotten."""
        now = self._clock()
        limit = now - self.settings.retention
        doomed = [k for k, st in self._states.items() if st.probed_at < limit]
        if len(self._states) - len(doomed) > MAX_STATES:
            survivors = sorted(
                (st.probed_at, k) for k, st in self._states.items() if st.probed_at >= limit
            )
            doomed += [k for _, k in survivors[: len(survivors) - MAX_STATES]]
        for key in doomed:
            if key not in self._waiting:
                self.forget(key)
        for table in (self._due, self._failures):
            for key in [k for k in table if k not in self._states and k not in self._waiting]:
                if self._due.get(key, 0.0) <= now:
                    table.pop(key, None)
        return len(doomed)

    # -- workers ---------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            key = job.dest.key
            self._running += 1
            try:
                due = self._clock() >= self._due.get(key, 0.0)  # probe_now may have run
                if due or (job.mx_changed and self._mx_changed(key, self._targets(job.dns))):
                    await self._shared_probe(job.dest, job.dns, fresh=False)
            except Exception:  # noqa: BLE001 (per-job boundary, like a per-connection loop)
                self._log.exception("%s: probe failed", key)
                self._due[key] = self._clock() + self.settings.backoff_initial
            finally:
                self._running -= 1
                self._waiting.discard(key)
                self._done += 1
                self._queue.task_done()

    async def _shared_probe(self, dest: Destination, dns: DnsEvidence, fresh: bool) -> ProbeState:
        # Shielded: a cancelled caller (policyctl gone) does not cancel the shared probe.
        return await self._inflight.run(dest.key, lambda: self._probe(dest, dns, fresh))

    async def _probe(self, dest: Destination, dns: DnsEvidence, fresh: bool) -> ProbeState:
        key = dest.key
        port = self.settings.port if dest.port == SMTP_PORT else dest.port
        hosts: list[ProbeHost] = []
        for mx in self._targets(dns):
            hosts.extend(await self._probe_mx(mx, port, fresh))
        now = self._clock()
        old = self._states.get(key)
        new, held = advance(old, tuple(hosts), now, self._damping)
        for host in hosts:
            self.counters.verdicts.inc(host.verdict.value)
        self.counters.held += held
        self._states[key] = new
        reachable = observed_level(tuple(hosts)) is not None
        self._failures[key] = 0 if reachable else self._failures.get(key, 0) + 1
        self._due[key] = now + self._interval(new, reachable, self._failures[key])
        self._report(key, new, held)
        record = Record(Kind.PROBE, key, probe_state_to_json(new), now + self.settings.retention)
        try:
            await self._store.put(record)
        except StoreError as exc:
            self._log.warning("%s: cannot store the probe result: %s", key, exc)
        before = None if old is None else (old.level, old.verified_names)
        if before != (new.level, new.verified_names) and self.on_change is not None:
            self.on_change(key)
        return new

    async def _probe_mx(self, mx: MxHost, port: int, fresh: bool) -> list[ProbeHost]:
        """The findings for one MX host on one port: recent ones if another destination's
        probe saw it within ``host_min_interval``, else a probe (shared with concurrent
        askers). A host may present other certificates on other ports (25, 587)."""
        name = f"{mx.name}:{port}"  # a DomainName: already in normal form
        started = self._clock()
        limit = self.settings.host_min_interval
        for old_name, (at, _) in list(self._recent.items()):
            if started - at >= limit:
                del self._recent[old_name]
        recent = self._recent.get(name)
        if recent is not None and not fresh:
            return recent[1]
        findings = await self._host_tasks.run(name, lambda: self._probe_host(mx, port))
        self._recent[name] = (started, findings)
        return findings

    async def _probe_host(self, mx: MxHost, port: int) -> list[ProbeHost]:
        return await self._prober(mx, port)

    def _mx_changed(self, key: str, targets: tuple[MxHost, ...]) -> bool:
        """Whether the MX hosts to probe are not those the evidence in force came from (a
        moved MX): then the evidence describes other servers and is renewed at once, at
        most once per ``host_min_interval``."""
        state = self._states.get(key)
        if state is None or not state.hosts:
            return False
        if self._clock() - state.probed_at < self.settings.host_min_interval:
            return False
        return {fold(h.host) for h in state.hosts} != {t.name for t in targets}

    def _targets(self, dns: DnsEvidence) -> tuple[MxHost, ...]:
        """The most preferred MX hosts whose addresses are known (secure or not)."""
        usable = [h for h in dns.hosts if h.address is not DnsStatus.FAILED and h.addresses]
        usable.sort(key=lambda h: h.preference)  # stable: DNS order breaks ties
        return tuple(usable[: self.settings.max_mx_hosts])

    def _interval(self, state: ProbeState, reachable: bool, failures: int = 0) -> float:
        """Seconds until the next probe of a destination."""
        s = self.settings
        if not reachable:
            doublings = min(failures - 1, MAX_BACKOFF_DOUBLINGS)
            return min(s.backoff_initial * 2.0**doublings, s.backoff_max)
        if state.level is None:
            return s.backoff_initial
        if state.pending is not None:
            # A weaker level is held: look again soon enough to confirm or clear it
            # within confirm_seconds instead of after confirm_probes days.
            spread = s.confirm_seconds / max(s.confirm_probes - 1, 1)
            return min(max(spread, s.host_min_interval), s.reprobe_interval)
        return s.reprobe_interval

    def _report(self, key: str, state: ProbeState, held: bool) -> None:
        shown = [f"{h.host}[{h.address}]={h.verdict.value}" for h in state.hosts]
        if len(shown) > MAX_HOSTS_IN_LOG:
            shown = [*shown[:MAX_HOSTS_IN_LOG], "..."]
        level = state.level.value if state.level is not None else "none"
        self._log.info("%s: probe level=%s hosts=%s", key, level, ",".join(shown) or "-")
        if held and state.pending_names:
            self._log.warning(
                "%s: probe verified other MX names %s (%d/%d), keeping %s: possible attack",
                key,
                ",".join(state.pending_names),
                state.pending_count,
                self.settings.confirm_probes,
                ",".join(state.verified_names),
            )
        elif held and state.pending is not None:
            self._log.warning(
                "%s: probe saw weaker level %s (%d/%d), holding %s: possible attack",
                key,
                state.pending.value,
                state.pending_count,
                self.settings.confirm_probes,
                level,
            )
