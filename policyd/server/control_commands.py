"""What each control command does, given a typed request: the dispatcher behind the socket.

The transport (:mod:`policyd.server.control`) has already framed, decoded and authorised
the request; here it runs against the daemon's :class:`~policyd.service.PolicyService`
and the result becomes a JSON document (the ``policyctl --json`` output, described in
man/policyctl.8). Failures the postmaster can act on are a :class:`CommandError` with a
protocol error code; anything else is a bug and is handled by the connection's catch-all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, assert_never, runtime_checkable

from policyd import __version__
from policyd.codec import control, postfix_policy
from policyd.codec.control import ErrorCode, JsonObject, JsonValue
from policyd.core import feasibility
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    Evidence,
    Override,
    ProbeState,
)
from policyd.core.profile import Profile
from policyd.core.report import ReportLimits, build_report
from policyd.server.control_docs import (
    explain_doc,
    jsonable,
    override_doc,
    report_doc,
)
from policyd.service import PolicyService, level_text

log = logging.getLogger("policyd")

MAX_REPORT_CHANGES: Final = 1000  # newest level changes a report lists
MAX_REPORT_NAMES: Final = 1000  # destinations listed per level, held, TEMP, STS failures
# Background lookups started by `warm` (policyd-milter) at once; beyond it a warm request
# is skipped: a flood of recipients must not turn into a flood of DNS, HTTPS and probes.
MAX_WARM_TASKS: Final = 256
DEFAULT_PROFILE: Final = "postfix"  # the profile `warm` and `check` decide for


class CommandError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a control connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}(uid={self.uid},pid={self.pid})"


# -- the daemon as the dispatcher sees it ------------------------------------------------


class ServerSettingsLike(Protocol):
    @property
    def socketmap(self) -> tuple[str, ...]: ...
    @property
    def control(self) -> str: ...


class ControlSettingsLike(Protocol):
    @property
    def group(self) -> str: ...
    @property
    def read_group(self) -> str: ...
    @property
    def mode(self) -> str: ...


class StoreSettingsLike(Protocol):
    @property
    def url(self) -> str: ...


class ConfigLike(Protocol):
    @property
    def server(self) -> ServerSettingsLike: ...
    @property
    def control(self) -> ControlSettingsLike: ...
    @property
    def store(self) -> StoreSettingsLike: ...


class ListenerStats(Protocol):
    @property
    def connections(self) -> int: ...
    @property
    def refused(self) -> int: ...


class DaemonLike(Protocol):
    @property
    def config(self) -> ConfigLike: ...
    @property
    def service(self) -> PolicyService: ...
    @property
    def server(self) -> ListenerStats: ...
    @property
    def started_at(self) -> float: ...

    async def reload(self) -> bool: ...

    def clear_dns_cache(self) -> None:
        """Forget cached DNS answers: after ``flush`` the next lookup asks the resolver."""


@runtime_checkable
class Prober(Protocol):
    """What ``probe`` and ``status`` need of the probe source (policyd/sources/probe.py)."""

    async def probe_now(self, dest: Destination, dns: DnsEvidence) -> ProbeState: ...

    def stats(self) -> object: ...


@runtime_checkable
class StsQueue(Protocol):
    """What ``status`` shows of the MTA-STS source (policyd/sources/sts.py)."""

    def queue_stats(self) -> object: ...


# -- the dispatcher ----------------------------------------------------------------------


class Commands:
    def __init__(self, daemon: DaemonLike, clock: Callable[[], float] = time.time) -> None:
        self._daemon = daemon
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._warming: dict[str, asyncio.Task[object]] = {}

    @property
    def _service(self) -> PolicyService:
        return self._daemon.service

    async def run(self, req: control.Request, peer: Peer) -> JsonValue:
        """One command, dispatched exhaustively: a request type added to the codec and not
        handled here is a type error (mypy), never a fall-through to another command."""
        match req:
            case control.OverrideSet():
                return await self._override_set(req, peer)
            case control.OverrideDel():
                key = req.destination.key
                if not await self._service.delete_override(key):
                    raise CommandError(ErrorCode.NOTFOUND, f"no override for {key}")
                log.info("control: %s deleted the override for %s", peer, key)
                return {"destination": key, "deleted": True}
            case control.OverrideList():
                now = self._clock()
                ovs = sorted(self._service.overrides.values(), key=lambda o: o.key)
                return {"overrides": [override_doc(o, now) for o in ovs]}
            case control.Explain():
                return await self.explain(req.destination)
            case control.Probe():
                return await self._probe(req, peer)
            case control.Flush():
                return await self._flush(req, peer)
            case control.Report():
                return await self._report(req)
            case control.Status():
                return self._status()
            case control.Warm():
                return self._warm(req)
            case control.Check():
                return await self._check(req.destination)
            case control.Reload():
                if not await self._daemon.reload():
                    raise CommandError(
                        ErrorCode.INTERNAL,
                        "reload failed, old configuration kept: see the policyd log",
                    )
                log.info("control: %s reloaded the configuration", peer)
                return {"reloaded": True}
            case _:
                assert_never(req)

    async def _flush(self, req: control.Flush, peer: Peer) -> JsonValue:
        key = None if req.destination is None else req.destination.key
        count = await self._service.flush(key, mta_sts=req.include_mta_sts)
        self._daemon.clear_dns_cache()  # the next lookup starts from fresh DNS answers
        sts = " (MTA-STS policies included)" if req.include_mta_sts else ""
        log.info("control: %s flushed %s%s", peer, key or "all cached evidence", sts)
        return {"destination": key, "records": count, "mta_sts": req.include_mta_sts}

    async def _override_set(self, req: control.OverrideSet, peer: Peer) -> JsonValue:
        now = self._clock()
        ov = Override(
            key=req.destination.key,
            policy=req.policy,
            expires_at=None if req.expires is None else now + req.expires,
            comment=req.comment,
            author=peer.user,
            created_at=now,
        )
        await self._service.set_override(ov)
        log.info(
            "control: %s set override %s: %s%s",
            peer,
            ov.key,
            postfix_policy.render(req.policy),
            f" comment={req.comment}" if req.comment else "",
        )
        return override_doc(ov, now)

    async def explain(self, dest: Destination) -> JsonObject:
        rows = await self._service.explain(dest)
        evidence = rows[0][2] if rows else Evidence(dest)
        answers = [(p.name, v) for p, v, _ev in rows]
        doc = explain_doc(dest, answers, evidence, self._clock())
        dry = {p.name for p, _v, _ev in rows if p.dry_run}
        for row in doc["answers"] if isinstance(doc["answers"], list) else []:
            if isinstance(row, dict) and row.get("profile") in dry:
                # Postfix is told NOTFOUND; the decision is what it would be told.
                row["dry_run"] = True
                row["would_reply"] = row["reply"]
                row["reply"] = "NOTFOUND"
        return doc

    async def _probe(self, req: control.Probe, peer: Peer) -> JsonValue:
        prober = self._service.probe
        if not isinstance(prober, Prober):
            raise CommandError(ErrorCode.INTERNAL, "the probe source cannot probe on demand")
        dest = req.destination

        async def probe() -> None:
            dns = await self._service.dane.gather(dest, self._clock())
            if not dns.hosts:
                raise CommandError(
                    ErrorCode.NOTFOUND, f"{dest.key}: no MX host to probe ({dns.kind.value})"
                )
            await prober.probe_now(dest, dns)
            self._service.invalidate(dest.key)

        log.info("control: %s asked for a probe of %s", peer, dest.key)
        if req.wait:
            await probe()
            return await self.explain(dest)
        task = asyncio.get_running_loop().create_task(probe())
        self._background.add(task)
        task.add_done_callback(self._probe_done)
        return {"destination": dest.key, "queued": True}

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, CommandError):
            log.warning("control: probe: %s", exc.message)
        elif exc is not None:
            log.error("control: probe failed: %r", exc)

    def _default_profile(self) -> Profile:
        profiles = self._service.profiles
        for p in profiles:
            if p.name == DEFAULT_PROFILE:
                return p
        return profiles[0]

    def _warm(self, req: control.Warm) -> JsonValue:
        """Start a lookup per destination and answer at once: the milter must not wait."""
        profile = self._default_profile()
        scheduled = 0
        for dest in req.destinations:
            if dest.key in self._warming or len(self._warming) >= MAX_WARM_TASKS:
                continue
            task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
                self._service.answer(dest, profile)
            )
            self._warming[dest.key] = task
            task.add_done_callback(functools.partial(self._warm_done, dest.key))
            scheduled += 1
        return {"scheduled": scheduled, "requested": len(req.destinations)}

    def _warm_done(self, key: str, task: asyncio.Task[object]) -> None:
        self._warming.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("control: warming %s failed: %r", key, task.exception())

    async def _check(self, dest: Destination) -> JsonValue:
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
            evidence = dataclasses.replace(evidence, probe=service.probe.cached(dest.key))
        verdict = answer.verdict
        return {
            "destination": dest.key,
            "level": level_text(verdict),
            "rule": verdict.rule.value,
            "reason": verdict.reason,
            # A dry-run profile enforces nothing: nothing for the milter to act on.
            "problem": None
            if profile.dry_run
            else feasibility.problem(verdict, evidence, self._clock()),
        }

    async def _report(self, req: control.Report) -> JsonValue:
        service = self._service
        now = self._clock()
        since = now - req.since
        await service.writes.flush()  # events still queued for the store count too
        report = build_report(
            await service.store.events(since),
            service.remembered(),
            since=since,
            now=now,
            limits=ReportLimits(changes=MAX_REPORT_CHANGES, names=MAX_REPORT_NAMES),
            level_of=level_text,
            probe_of=service.probe.cached,
            sts_of=lambda domain: service.sts.cached(domain, now),
        )
        return report_doc(report, temp_answers=service.stats.temp, dry_run=self._dry_run())

    def _dry_run(self) -> JsonValue:
        """Per dry-run profile: what Postfix would have been told instead of NOTFOUND,
        destination by destination (the latest decision), and the answers counted."""
        service = self._service
        dry = {p.name for p in service.profiles if p.dry_run}
        would: dict[str, dict[str, list[str]]] = {name: {} for name in sorted(dry)}
        for (profile, key), verdict in sorted(service.remembered().items()):
            if profile not in dry:
                continue
            level = level_text(verdict)
            if level == "NOTFOUND":
                continue  # what Postfix got anyway: no change
            names = would[profile].setdefault(level, [])
            if len(names) < MAX_REPORT_NAMES:
                names.append(key)
        answers: dict[str, dict[str, int]] = {name: {} for name in sorted(dry)}
        for (profile, level), count in service.counters.dry_run.items():
            if profile in answers:
                answers[profile][level] = count
        return {
            name: {"would_change": jsonable(would[name]), "answers": jsonable(answers[name])}
            for name in sorted(dry)
        }

    def _status(self) -> JsonValue:
        d = self._daemon
        service = d.service
        cfg = d.config
        prober = service.probe
        probe_stats = jsonable(prober.stats()) if isinstance(prober, Prober) else None
        sts = service.sts
        sts_stats = jsonable(sts.queue_stats()) if isinstance(sts, StsQueue) else None
        server = getattr(d, "server", None)
        return {
            "version": __version__,
            "uptime": round(asyncio.get_running_loop().time() - d.started_at, 1),
            "listeners": [*cfg.server.socketmap, cfg.server.control],
            "store": cfg.store.url.partition("://")[0],
            "connections": None if server is None else server.connections,
            "refused": None if server is None else server.refused,
            "cache": {
                "answers": service.cached_answers,
                "verdicts": len(service.remembered()),
                "overrides": len(service.overrides),
            },
            "lookups": jsonable(service.stats),
            "probe": probe_stats,
            "mta_sts": sts_stats,
            "fleet": _fleet_status(getattr(d, "fleet", None)),
        }


def _fleet_status(fleet: object) -> JsonValue:
    """The fleet link (a Redis store only): ``up`` or ``down`` with its counters."""
    state = getattr(fleet, "state", None)
    if not isinstance(state, str):
        return None
    counters = jsonable(getattr(fleet, "counters", None))
    return {"link": state, **(counters if isinstance(counters, dict) else {})}
