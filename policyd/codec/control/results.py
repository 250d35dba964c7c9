"""Control results: one frozen value per command's answer, the ``policyctl --json`` shapes.

The daemon builds them and sends ``to_json()``; ``policyctl`` reads them back with
:func:`decode_result`, strict on the fields it knows and tolerant of others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self, TypeAlias, assert_never

from policyd.codec.control import requests as rq
from policyd.codec.control.evidence import DnsDoc, OverrideDoc, ProbeDoc, StsDoc
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    WireDoc,
    as_object,
    list_of,
    nested,
    optional,
    read,
    table_of,
    wire,
    wire_doc,
)
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.codec.control.report import ReportResult


@wire_doc
class VerdictRow(WireDoc):
    """What one profile tells Postfix. A dry-run profile tells it NOTFOUND; ``would_reply``
    is what it decided."""

    profile: str = wire("profile", TEXT)
    # TEMP, NOTFOUND, or the policy in one word: LEVEL[,attr=value...]
    level: str = wire("level", TEXT)
    reply: str = wire("reply", TEXT)  # the socketmap reply text
    rule: str = wire("rule", TEXT)
    reason: str = wire("reason", TEXT)
    would_reply: str | None = None  # a dry-run profile only

    WHAT = "answer"  # on the wire, a dry-run profile adds "dry_run": true and "would_reply"

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


@wire_doc
class ExplainResult(WireDoc):
    destination: str = wire("destination", TEXT)
    now: float = wire("now", NUMBER)
    answers: tuple[VerdictRow, ...] = wire("answers", list_of(nested(VerdictRow)))
    # None: not looked up (parent-domain form, address literal)
    dns: DnsDoc | None = wire("dns", optional(nested(DnsDoc)))
    mta_sts: StsDoc = wire("mta_sts", nested(StsDoc))
    probe: ProbeDoc | None = wire("probe", optional(nested(ProbeDoc)))
    override: OverrideDoc | None = wire("override", optional(nested(OverrideDoc)))

    WHAT = "explain"


@wire_doc
class ProbeQueued(WireDoc):
    destination: str = wire("destination", TEXT)

    WHAT = "probe"
    CONSTANTS = ("queued",)


@wire_doc
class OverrideDeleted(WireDoc):
    destination: str = wire("destination", TEXT)

    WHAT = "override-del"
    CONSTANTS = ("deleted",)


@wire_doc
class Overrides(WireDoc):
    overrides: tuple[OverrideDoc, ...] = wire("overrides", list_of(nested(OverrideDoc)))

    WHAT = "override-list"


@wire_doc
class Flushed(WireDoc):
    destination: str | None = wire("destination", optional(TEXT))  # None: every destination
    records: int = wire("records", INT)  # stored records deleted
    mta_sts: bool = wire("mta_sts", FLAG)  # MTA-STS policies included

    WHAT = "flush"


@wire_doc
class Reloaded(WireDoc):
    WHAT = "reload"
    CONSTANTS = ("reloaded",)


@wire_doc
class Warmed(WireDoc):
    scheduled: int = wire("scheduled", INT)  # lookups started
    requested: int = wire("requested", INT)

    WHAT = "warm"


@wire_doc
class Checked(WireDoc):
    """The verdict Postfix gets now for the default profile, and why it cannot be met."""

    destination: str = wire("destination", TEXT)
    level: str = wire("level", TEXT)
    rule: str = wire("rule", TEXT)
    reason: str = wire("reason", TEXT)
    # None: it can be met (or a dry-run profile enforces nothing)
    problem: str | None = wire("problem", optional(TEXT))

    WHAT = "check"


# -- status ---------------------------------------------------------------------------------


@wire_doc
class CacheCounts(WireDoc):
    answers: int = wire("answers", INT)  # reply cache entries
    verdicts: int = wire("verdicts", INT)  # destinations with a remembered verdict
    overrides: int = wire("overrides", INT)

    WHAT = "cache"


@wire_doc
class LookupCounts(WireDoc):
    lookups: int = wire("lookups", INT)  # served from the slow path
    hits: int = wire("hits", INT)  # served from the cache
    temp: int = wire("temp", INT)
    perm: int = wire("perm", INT)

    WHAT = "lookups"


@wire_doc
class PrefetchCounts(WireDoc):
    started: int = wire("started", INT)  # refreshes before expiry, since start
    skipped: int = wire("skipped", INT)  # not started: the in-flight limit
    failed: int = wire("failed", INT)  # the old answer kept its expiry

    WHAT = "prefetch"


@wire_doc
class ProbeQueueCounts(WireDoc):
    queued: int = wire("queued", INT)
    running: int = wire("running", INT)
    dropped: int = wire("dropped", INT)  # refused, queue full, since start
    done: int = wire("done", INT)  # since start
    known: int = wire("known", INT)  # destinations with probe evidence in memory

    WHAT = "probe"


@wire_doc
class FetchQueueCounts(WireDoc):
    running: int = wire("running", INT)
    queued: int = wire("queued", INT)
    dropped: int = wire("dropped", INT)  # since start
    preempted: int = wire("preempted", INT)  # background runs stopped for urgent work, since start

    WHAT = "mta_sts"


@wire_doc
class FleetCounts(WireDoc):
    link: str = wire("link", TEXT)  # up or down
    # kind -> how it was settled -> count
    work: Mapping[str, Mapping[str, int]] = wire("work", table_of(table_of(INT)))
    published: int = wire("published", INT)
    received: int = wire("received", INT)
    publish_failures: int = wire("publish_failures", INT)

    WHAT = "fleet"


@wire_doc
class StatusResult(WireDoc):
    version: str = wire("version", TEXT)
    uptime: float = wire("uptime", NUMBER)  # seconds
    listeners: tuple[str, ...] = wire("listeners", TEXTS)
    store: str = wire("store", TEXT)  # the store's URL scheme
    connections: int | None = wire("connections", optional(INT))  # socketmap connections open
    # socketmap connections refused at the limit
    refused: int | None = wire("refused", optional(INT))
    cache: CacheCounts = wire("cache", nested(CacheCounts))
    lookups: LookupCounts = wire("lookups", nested(LookupCounts))
    probe: ProbeQueueCounts | None = wire("probe", optional(nested(ProbeQueueCounts)))
    mta_sts: FetchQueueCounts | None = wire("mta_sts", optional(nested(FetchQueueCounts)))
    fleet: FleetCounts | None = wire("fleet", optional(nested(FleetCounts)))  # a Redis store only
    # absent from a daemon before prefetch
    prefetch: PrefetchCounts | None = wire("prefetch", optional(nested(PrefetchCounts)))

    WHAT = "status"


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
