"""Control results: one frozen value per command's answer, the ``policyctl --json`` shapes.

The daemon builds them and sends ``to_json()``; ``policyctl`` reads them back with
:func:`decode_result`, strict on the fields it knows and tolerant of others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self, TypeAlias, assert_never

from policyd.codec.control import requests as rq
from policyd.codec.control.evidence import DnsDoc, OverrideDoc, ProbeDoc, StsDoc
from policyd.codec.control.fields import Fields, read_count
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.codec.control.report import ReportResult


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """What one profile tells Postfix. A dry-run profile tells it NOTFOUND; ``would_reply``
    is what it decided."""

    profile: str
    level: str  # TEMP, NOTFOUND, or the policy in one word: LEVEL[,attr=value...]
    reply: str  # the socketmap reply text
    rule: str
    reason: str
    would_reply: str | None = None  # a dry-run profile only

    @property
    def dry_run(self) -> bool:
        return self.would_reply is not None

    @property
    def told(self) -> str:
        """What Postfix is told, in one word: the level keyword, NOTFOUND or TEMP."""
        return "NOTFOUND" if self.dry_run else self.level.partition(",")[0]

    def to_json(self) -> JsonObject:
        doc: JsonObject = {
            "profile": self.profile,
            "level": self.level,
            "reply": self.reply,
            "rule": self.rule,
            "reason": self.reason,
        }
        if self.would_reply is not None:
            doc["dry_run"] = True
            doc["would_reply"] = self.would_reply
        return doc

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("answer", value)
        dry = f.has("dry_run") and f.flag("dry_run")
        return cls(
            f.text("profile"), f.text("level"), f.text("reply"), f.text("rule"),
            f.text("reason"), f.text("would_reply") if dry else None,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExplainResult:
    destination: str
    now: float
    answers: tuple[VerdictRow, ...]
    dns: DnsDoc | None  # None: not looked up (parent-domain form, address literal)
    mta_sts: StsDoc
    probe: ProbeDoc | None
    override: OverrideDoc | None

    def to_json(self) -> JsonObject:
        return {
            "destination": self.destination,
            "now": self.now,
            "answers": [a.to_json() for a in self.answers],
            "dns": None if self.dns is None else self.dns.to_json(),
            "mta_sts": self.mta_sts.to_json(),
            "probe": None if self.probe is None else self.probe.to_json(),
            "override": None if self.override is None else self.override.to_json(),
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("explain", value)
        return cls(
            f.text("destination"),
            f.number("now"),
            f.objs("answers", VerdictRow.from_json),
            f.opt_obj("dns", DnsDoc.from_json),
            f.obj("mta_sts", StsDoc.from_json),
            f.opt_obj("probe", ProbeDoc.from_json),
            f.opt_obj("override", OverrideDoc.from_json),
        )


@dataclass(frozen=True, slots=True)
class ProbeQueued:
    destination: str

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, "queued": True}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(Fields("probe", value).text("destination"))


@dataclass(frozen=True, slots=True)
class OverrideDeleted:
    destination: str

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, "deleted": True}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(Fields("override-del", value).text("destination"))


@dataclass(frozen=True, slots=True)
class Overrides:
    overrides: tuple[OverrideDoc, ...]

    def to_json(self) -> JsonObject:
        return {"overrides": [o.to_json() for o in self.overrides]}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(Fields("override-list", value).objs("overrides", OverrideDoc.from_json))


@dataclass(frozen=True, slots=True)
class Flushed:
    destination: str | None  # None: every destination
    records: int  # stored records deleted
    mta_sts: bool  # MTA-STS policies included

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, "records": self.records, "mta_sts": self.mta_sts}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("flush", value)
        return cls(f.opt_text("destination"), f.integer("records"), f.flag("mta_sts"))


@dataclass(frozen=True, slots=True)
class Reloaded:
    def to_json(self) -> JsonObject:
        return {"reloaded": True}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        Fields("reload", value).flag("reloaded")
        return cls()


@dataclass(frozen=True, slots=True)
class Warmed:
    scheduled: int  # lookups started
    requested: int

    def to_json(self) -> JsonObject:
        return {"scheduled": self.scheduled, "requested": self.requested}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("warm", value)
        return cls(f.integer("scheduled"), f.integer("requested"))


@dataclass(frozen=True, slots=True)
class Checked:
    """The verdict Postfix gets now for the default profile, and why it cannot be met."""

    destination: str
    level: str
    rule: str
    reason: str
    problem: str | None  # None: it can be met (or a dry-run profile enforces nothing)

    def to_json(self) -> JsonObject:
        return {
            "destination": self.destination,
            "level": self.level,
            "rule": self.rule,
            "reason": self.reason,
            "problem": self.problem,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("check", value)
        return cls(
            f.text("destination"), f.text("level"), f.text("rule"), f.text("reason"),
            f.opt_text("problem"),
        )  # fmt: skip


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheCounts:
    answers: int  # reply cache entries
    verdicts: int  # destinations with a remembered verdict
    overrides: int

    def to_json(self) -> JsonObject:
        return {"answers": self.answers, "verdicts": self.verdicts, "overrides": self.overrides}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("cache", value)
        return cls(f.integer("answers"), f.integer("verdicts"), f.integer("overrides"))


@dataclass(frozen=True, slots=True)
class LookupCounts:
    lookups: int  # served from the slow path
    hits: int  # served from the cache
    temp: int
    perm: int

    def to_json(self) -> JsonObject:
        return {"lookups": self.lookups, "hits": self.hits, "temp": self.temp, "perm": self.perm}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("lookups", value)
        return cls(f.integer("lookups"), f.integer("hits"), f.integer("temp"), f.integer("perm"))


@dataclass(frozen=True, slots=True)
class ProbeQueueCounts:
    queued: int
    running: int
    dropped: int  # refused, queue full, since start
    done: int  # since start
    known: int  # destinations with probe evidence in memory

    def to_json(self) -> JsonObject:
        return {
            "queued": self.queued,
            "running": self.running,
            "dropped": self.dropped,
            "done": self.done,
            "known": self.known,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("probe", value)
        return cls(
            f.integer("queued"), f.integer("running"), f.integer("dropped"), f.integer("done"),
            f.integer("known"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FetchQueueCounts:
    running: int
    queued: int
    dropped: int  # since start
    preempted: int  # background runs stopped for urgent work, since start

    def to_json(self) -> JsonObject:
        return {
            "running": self.running,
            "queued": self.queued,
            "dropped": self.dropped,
            "preempted": self.preempted,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("mta_sts", value)
        return cls(
            f.integer("running"), f.integer("queued"), f.integer("dropped"),
            f.integer("preempted"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FleetCounts:
    link: str  # up or down
    work: Mapping[str, Mapping[str, int]]  # kind -> how it was settled -> count
    published: int
    received: int
    publish_failures: int

    def to_json(self) -> JsonObject:
        return {
            "link": self.link,
            "work": {kind: dict(counts) for kind, counts in self.work.items()},
            "published": self.published,
            "received": self.received,
            "publish_failures": self.publish_failures,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("fleet", value)
        return cls(
            f.text("link"),
            f.table("work", lambda what, v: Fields(what, {"t": v}).table("t", read_count)),
            f.integer("published"),
            f.integer("received"),
            f.integer("publish_failures"),
        )


@dataclass(frozen=True, slots=True)
class StatusResult:
    version: str
    uptime: float  # seconds
    listeners: tuple[str, ...]
    store: str  # the store's URL scheme
    connections: int | None  # socketmap connections open
    refused: int | None  # socketmap connections refused at the limit
    cache: CacheCounts
    lookups: LookupCounts
    probe: ProbeQueueCounts | None
    mta_sts: FetchQueueCounts | None
    fleet: FleetCounts | None  # a Redis store only

    def to_json(self) -> JsonObject:
        return {
            "version": self.version,
            "uptime": self.uptime,
            "listeners": list(self.listeners),
            "store": self.store,
            "connections": self.connections,
            "refused": self.refused,
            "cache": self.cache.to_json(),
            "lookups": self.lookups.to_json(),
            "probe": None if self.probe is None else self.probe.to_json(),
            "mta_sts": None if self.mta_sts is None else self.mta_sts.to_json(),
            "fleet": None if self.fleet is None else self.fleet.to_json(),
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("status", value)
        return cls(
            f.text("version"),
            f.number("uptime"),
            f.texts("listeners"),
            f.text("store"),
            f.opt_integer("connections"),
            f.opt_integer("refused"),
            f.obj("cache", CacheCounts.from_json),
            f.obj("lookups", LookupCounts.from_json),
            f.opt_obj("probe", ProbeQueueCounts.from_json),
            f.opt_obj("mta_sts", FetchQueueCounts.from_json),
            f.opt_obj("fleet", FleetCounts.from_json),
        )


Result: TypeAlias = (
    ExplainResult
    | ProbeQueued
    | OverrideDoc
    | OverrideDeleted
    | Overrides
    | Flushed
    | ReportResult
    | StatusResult
    | Reloaded
    | Warmed
    | Checked
)


def decode_result(req: rq.Request, value: JsonValue) -> Result:
    """The typed result of ``req`` from the reply's ``result`` value."""
    match req:
        case rq.Explain():
            return ExplainResult.from_json(value)
        case rq.Probe():
            if Fields("probe", value).has("queued"):
                return ProbeQueued.from_json(value)
            return ExplainResult.from_json(value)
        case rq.OverrideSet():
            return OverrideDoc.from_json(value)
        case rq.OverrideDel():
            return OverrideDeleted.from_json(value)
        case rq.OverrideList():
            return Overrides.from_json(value)
        case rq.Flush():
            return Flushed.from_json(value)
        case rq.Report():
            return ReportResult.from_json(value)
        case rq.Status():
            return StatusResult.from_json(value)
        case rq.Reload():
            return Reloaded.from_json(value)
        case rq.Warm():
            return Warmed.from_json(value)
        case rq.Check():
            return Checked.from_json(value)
        case _:
            assert_never(req)
