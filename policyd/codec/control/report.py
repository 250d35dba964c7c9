"""The result of ``report``: what changed, destinations by level, TEMP, held, failing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from policyd.codec.control.evidence import ProbeDoc
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    Field,
    WireDoc,
    list_of,
    nested,
    optional,
    read,
    table_of,
)
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.core.report import Report


@dataclass(frozen=True, slots=True)
class ChangeRow(WireDoc):
    at: float
    destination: str
    profile: str
    level: str
    previous: str | None  # None: first seen
    reason: str

    WHAT = "change"
    WIRE = (
        Field("at", NUMBER),
        Field("destination", TEXT),
        Field("profile", TEXT),
        Field("level", TEXT),
        Field("previous", optional(TEXT)),
        Field("reason", TEXT),
    )


@dataclass(frozen=True, slots=True)
class TempRow(WireDoc):
    destination: str
    profile: str
    reason: str

    WHAT = "temp destination"
    WIRE = (Field("destination", TEXT), Field("profile", TEXT), Field("reason", TEXT))


@dataclass(frozen=True, slots=True)
class TempSummary(WireDoc):
    answers: int  # TEMP answers since start
    destinations: tuple[TempRow, ...]  # those whose latest verdict is TEMP

    WHAT = "temp"
    WIRE = (Field("answers", INT), Field("destinations", list_of(nested(TempRow))))


@dataclass(frozen=True, slots=True)
class HeldRow(WireDoc):
    """A destination whose weaker probe result damping holds back; on the wire its probe
    document with the destination beside the probe's fields."""

    destination: str
    probe: ProbeDoc

    WHAT = "held"
    WIRE = (Field("destination", TEXT),)  # and the probe's fields beside it

    def to_json(self) -> JsonObject:
        return WireDoc.to_json(self) | self.probe.to_json()

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(**read(cls.WHAT, cls.WIRE, value), probe=ProbeDoc.from_json(value))


@dataclass(frozen=True, slots=True)
class StsFailingRow(WireDoc):
    destination: str
    error: str
    cached: bool  # a cached policy still applies

    WHAT = "sts_failing"
    WIRE = (Field("destination", TEXT), Field("error", TEXT), Field("cached", FLAG))


@dataclass(frozen=True, slots=True)
class DryRunDoc(WireDoc):
    """One dry-run profile: what Postfix would have been told instead of NOTFOUND."""

    would_change: Mapping[str, tuple[str, ...]]  # level -> destinations
    answers: Mapping[str, int]  # level -> answers counted since start

    WHAT = "dry_run"
    WIRE = (Field("would_change", table_of(TEXTS)), Field("answers", table_of(INT)))


@dataclass(frozen=True, slots=True)
class ReportResult(WireDoc):
    since: float
    now: float
    dry_run: Mapping[str, DryRunDoc]  # profile -> what it would have changed
    changes: tuple[ChangeRow, ...]
    levels: Mapping[str, Mapping[str, tuple[str, ...]]]  # profile -> level -> destinations
    rules: Mapping[str, Mapping[str, int]]  # profile -> rule -> destinations decided by it
    temp: TempSummary
    held: tuple[HeldRow, ...]
    sts_failing: tuple[StsFailingRow, ...]

    WHAT = "report"
    WIRE = (
        Field("since", NUMBER),
        Field("now", NUMBER),
        Field("dry_run", table_of(nested(DryRunDoc))),
        Field("changes", list_of(nested(ChangeRow))),
        Field("levels", table_of(table_of(TEXTS))),
        Field("rules", table_of(table_of(INT))),
        Field("temp", nested(TempSummary)),
        Field("held", list_of(nested(HeldRow))),
        Field("sts_failing", list_of(nested(StsFailingRow))),
    )

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
