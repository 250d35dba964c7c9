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
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    Field,
    WireDoc,
    as_object,
    constant,
    list_of,
    nested,
    optional,
    read,
    table_of,
)
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.codec.control.report import ReportResult


@dataclass(frozen=True, slots=True)
class VerdictRow(WireDoc):
    """What one profile tells Postfix. A dry-run profile tells it NOTFOUND; ``would_reply``
    is what it decided."""

    profile: str
    level: str  # TEMP, NOTFOUND, or the policy in one word: LEVEL[,attr=value...]
    reply: str  # the socketmap reply text
    rule: str
    reason: str
    would_reply: str | None = None  # a dry-run profile only

    WHAT = "answer"
    WIRE = (
        Field("profile", TEXT),
        Field("level", TEXT),
        Field("reply", TEXT),
        Field("rule", TEXT),
        Field("reason", TEXT),
    )  # then, a dry-run profile only: "dry_run": true, "would_reply"

    def to_json(self) -> JsonObject:
        doc = WireDoc.to_json(self)
        if self.would_reply is not None:
            doc |= {"dry_run": True, "would_reply": self.would_reply}
        return doc

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        row = read(cls.WHAT, cls.WIRE, value)
        doc = as_object(cls.WHAT, value)
        if "dry_run" in doc and FLAG.get(cls.WHAT, doc, "dry_run"):
            row["would_reply"] = TEXT.get(cls.WHAT, doc, "would_reply")
        return cls(**row)

    @property
    def dry_run(self) -> bool:
        return self.would_reply is not None

    @property
    def told(self) -> str:
        """What Postfix is told, in one word: the level keyword, NOTFOUND or TEMP."""
        return "NOTFOUND" if self.dry_run else self.level.partition(",")[0]


@dataclass(frozen=True, slots=True)
class ExplainResult(WireDoc):
    destination: str
    now: float
    answers: tuple[VerdictRow, ...]
    dns: DnsDoc | None  # None: not looked up (parent-domain form, address literal)
    mta_sts: StsDoc
    probe: ProbeDoc | None
    override: OverrideDoc | None

    WHAT = "explain"
    WIRE = (
        Field("destination", TEXT),
        Field("now", NUMBER),
        Field("answers", list_of(nested(VerdictRow))),
        Field("dns", optional(nested(DnsDoc))),
        Field("mta_sts", nested(StsDoc)),
        Field("probe", optional(nested(ProbeDoc))),
        Field("override", optional(nested(OverrideDoc))),
    )


@dataclass(frozen=True, slots=True)
class ProbeQueued(WireDoc):
    destination: str

    WHAT = "probe"
    WIRE = (Field("destination", TEXT), constant("queued"))


@dataclass(frozen=True, slots=True)
class OverrideDeleted(WireDoc):
    destination: str

    WHAT = "override-del"
    WIRE = (Field("destination", TEXT), constant("deleted"))


@dataclass(frozen=True, slots=True)
class Overrides(WireDoc):
    overrides: tuple[OverrideDoc, ...]

    WHAT = "override-list"
    WIRE = (Field("overrides", list_of(nested(OverrideDoc))),)


@dataclass(frozen=True, slots=True)
class Flushed(WireDoc):
    destination: str | None  # None: every destination
    records: int  # stored records deleted
    mta_sts: bool  # MTA-STS policies included

    WHAT = "flush"
    WIRE = (Field("destination", optional(TEXT)), Field("records", INT), Field("mta_sts", FLAG))


@dataclass(frozen=True, slots=True)
class Reloaded(WireDoc):
    WHAT = "reload"
    WIRE = (constant("reloaded"),)


@dataclass(frozen=True, slots=True)
class Warmed(WireDoc):
    scheduled: int  # lookups started
    requested: int

    WHAT = "warm"
    WIRE = (Field("scheduled", INT), Field("requested", INT))


@dataclass(frozen=True, slots=True)
class Checked(WireDoc):
    """The verdict Postfix gets now for the default profile, and why it cannot be met."""

    destination: str
    level: str
    rule: str
    reason: str
    problem: str | None  # None: it can be met (or a dry-run profile enforces nothing)

    WHAT = "check"
    WIRE = (
        Field("destination", TEXT),
        Field("level", TEXT),
        Field("rule", TEXT),
        Field("reason", TEXT),
        Field("problem", optional(TEXT)),
    )


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheCounts(WireDoc):
    answers: int  # reply cache entries
    verdicts: int  # destinations with a remembered verdict
    overrides: int

    WHAT = "cache"
    WIRE = (Field("answers", INT), Field("verdicts", INT), Field("overrides", INT))


@dataclass(frozen=True, slots=True)
class LookupCounts(WireDoc):
    lookups: int  # served from the slow path
    hits: int  # served from the cache
    temp: int
    perm: int

    WHAT = "lookups"
    WIRE = (Field("lookups", INT), Field("hits", INT), Field("temp", INT), Field("perm", INT))


@dataclass(frozen=True, slots=True)
class ProbeQueueCounts(WireDoc):
    queued: int
    running: int
    dropped: int  # refused, queue full, since start
    done: int  # since start
    known: int  # destinations with probe evidence in memory

    WHAT = "probe"
    WIRE = (
        Field("queued", INT),
        Field("running", INT),
        Field("dropped", INT),
        Field("done", INT),
        Field("known", INT),
    )


@dataclass(frozen=True, slots=True)
class FetchQueueCounts(WireDoc):
    running: int
    queued: int
    dropped: int  # since start
    preempted: int  # background runs stopped for urgent work, since start

    WHAT = "mta_sts"
    WIRE = (
        Field("running", INT),
        Field("queued", INT),
        Field("dropped", INT),
        Field("preempted", INT),
    )


@dataclass(frozen=True, slots=True)
class FleetCounts(WireDoc):
    link: str  # up or down
    work: Mapping[str, Mapping[str, int]]  # kind -> how it was settled -> count
    published: int
    received: int
    publish_failures: int

    WHAT = "fleet"
    WIRE = (
        Field("link", TEXT),
        Field("work", table_of(table_of(INT))),
        Field("published", INT),
        Field("received", INT),
        Field("publish_failures", INT),
    )


@dataclass(frozen=True, slots=True)
class StatusResult(WireDoc):
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

    WHAT = "status"
    WIRE = (
        Field("version", TEXT),
        Field("uptime", NUMBER),
        Field("listeners", TEXTS),
        Field("store", TEXT),
        Field("connections", optional(INT)),
        Field("refused", optional(INT)),
        Field("cache", nested(CacheCounts)),
        Field("lookups", nested(LookupCounts)),
        Field("probe", optional(nested(ProbeQueueCounts))),
        Field("mta_sts", optional(nested(FetchQueueCounts))),
        Field("fleet", optional(nested(FleetCounts))),
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
            if "queued" in as_object("probe", value):
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
