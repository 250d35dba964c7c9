"""The result of ``report``: what changed, destinations by level, TEMP, held, failing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from policyd.codec.control.evidence import ProbeDoc
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    WireDoc,
    list_of,
    nested,
    optional,
    read,
    table_of,
    wire,
    wire_doc,
)
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.core.report import Report


@wire_doc
class ChangeRow(WireDoc):
    at: float = wire("at", NUMBER)
    destination: str = wire("destination", TEXT)
    profile: str = wire("profile", TEXT)
    level: str = wire("level", TEXT)
    previous: str | None = wire("previous", optional(TEXT))  # None: first seen
    reason: str = wire("reason", TEXT)

    WHAT = "change"


@wire_doc
class TempRow(WireDoc):
    destination: str = wire("destination", TEXT)
    profile: str = wire("profile", TEXT)
    reason: str = wire("reason", TEXT)

    WHAT = "temp destination"


@wire_doc
class TempSummary(WireDoc):
    answers: int = wire("answers", INT)  # TEMP answers since start
    # those whose latest verdict is TEMP
    destinations: tuple[TempRow, ...] = wire("destinations", list_of(nested(TempRow)))

    WHAT = "temp"


@wire_doc
class HeldRow(WireDoc):
    """A destination whose weaker probe result damping holds back; on the wire its probe
    document with the destination beside the probe's fields."""

    destination: str = wire("destination", TEXT)
    probe: ProbeDoc

    WHAT = "held"

    def to_json(self) -> JsonObject:
        return WireDoc.to_json(self) | self.probe.to_json()

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(**read(cls.WHAT, cls.WIRE, value), probe=ProbeDoc.from_json(value))


@wire_doc
class StsFailingRow(WireDoc):
    destination: str = wire("destination", TEXT)
    error: str = wire("error", TEXT)
    cached: bool = wire("cached", FLAG)  # a cached policy still applies

    WHAT = "sts_failing"


@wire_doc
class DryRunDoc(WireDoc):
    """One dry-run profile: what Postfix would have been told instead of NOTFOUND."""

    # level -> destinations
    would_change: Mapping[str, tuple[str, ...]] = wire("would_change", table_of(TEXTS))
    # level -> answers counted since start
    answers: Mapping[str, int] = wire("answers", table_of(INT))

    WHAT = "dry_run"


@wire_doc
class ReportResult(WireDoc):
    since: float = wire("since", NUMBER)
    now: float = wire("now", NUMBER)
    # profile -> what it would have changed
    dry_run: Mapping[str, DryRunDoc] = wire("dry_run", table_of(nested(DryRunDoc)))
    changes: tuple[ChangeRow, ...] = wire("changes", list_of(nested(ChangeRow)))
    # profile -> level -> destinations
    levels: Mapping[str, Mapping[str, tuple[str, ...]]] = wire("levels", table_of(table_of(TEXTS)))
    # profile -> rule -> destinations decided by it
    rules: Mapping[str, Mapping[str, int]] = wire("rules", table_of(table_of(INT)))
    temp: TempSummary = wire("temp", nested(TempSummary))
    held: tuple[HeldRow, ...] = wire("held", list_of(nested(HeldRow)))
    sts_failing: tuple[StsFailingRow, ...] = wire("sts_failing", list_of(nested(StsFailingRow)))

    WHAT = "report"

    @classmethod
    def of(cls, report: Report, *, temp_answers: int, dry_run: Mapping[str, DryRunDoc]) -> Self:
        """``temp_answers``: TEMP answers since start; ``dry_run``: the dry-run profiles."""
        now = report.now
        held = ((key, ProbeDoc.of(state, now)) for key, state in report.held)
        return cls(
            since=report.since,
            now=now,
            dry_run=dry_run,
            changes=tuple(
                ChangeRow(e.at, e.key, e.profile, e.level, e.previous, e.reason)
                for e in report.changes
            ),
            levels=report.levels,
            rules={p: {r.value: n for r, n in by.items()} for p, by in report.rules.items()},
            temp=TempSummary(
                temp_answers, tuple(TempRow(t.key, t.profile, t.reason) for t in report.temp)
            ),
            held=tuple(HeldRow(key, doc) for key, doc in held if doc is not None),
            sts_failing=tuple(StsFailingRow(f.key, f.error, f.cached) for f in report.sts_failing),
        )
