"""The result of ``report``: what changed, destinations by level, TEMP, held, failing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from policyd.codec.control.evidence import ProbeDoc
from policyd.codec.control.fields import Fields, read_count, read_texts
from policyd.codec.control.framing import JsonObject, JsonValue
from policyd.core.report import Report


def _names_table(what: str, value: JsonValue) -> dict[str, tuple[str, ...]]:
    """level -> destinations"""
    return Fields(what, {"table": value}).table("table", read_texts)


def _count_table(what: str, value: JsonValue) -> dict[str, int]:
    """name -> count"""
    return Fields(what, {"table": value}).table("table", read_count)


def _names_json(table: Mapping[str, tuple[str, ...]]) -> JsonObject:
    return {key: list(names) for key, names in table.items()}


def _counts_json(table: Mapping[str, int]) -> JsonObject:
    return dict(table)


@dataclass(frozen=True, slots=True)
class ChangeRow:
    at: float
    destination: str
    profile: str
    level: str
    previous: str | None  # None: first seen
    reason: str

    def to_json(self) -> JsonObject:
        return {
            "at": self.at,
            "destination": self.destination,
            "profile": self.profile,
            "level": self.level,
            "previous": self.previous,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("change", value)
        return cls(
            f.number("at"), f.text("destination"), f.text("profile"), f.text("level"),
            f.opt_text("previous"), f.text("reason"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TempRow:
    destination: str
    profile: str
    reason: str

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, "profile": self.profile, "reason": self.reason}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("temp destination", value)
        return cls(f.text("destination"), f.text("profile"), f.text("reason"))


@dataclass(frozen=True, slots=True)
class TempSummary:
    answers: int  # TEMP answers since start
    destinations: tuple[TempRow, ...]  # those whose latest verdict is TEMP

    def to_json(self) -> JsonObject:
        return {"answers": self.answers, "destinations": [t.to_json() for t in self.destinations]}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("temp", value)
        return cls(f.integer("answers"), f.objs("destinations", TempRow.from_json))


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A destination whose weaker probe result damping holds back; on the wire its probe
    document with the destination beside the probe's fields."""

    destination: str
    probe: ProbeDoc

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, **self.probe.to_json()}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        return cls(Fields("held", value).text("destination"), ProbeDoc.from_json(value))


@dataclass(frozen=True, slots=True)
class StsFailingRow:
    destination: str
    error: str
    cached: bool  # a cached policy still applies

    def to_json(self) -> JsonObject:
        return {"destination": self.destination, "error": self.error, "cached": self.cached}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("sts_failing", value)
        return cls(f.text("destination"), f.text("error"), f.flag("cached"))


@dataclass(frozen=True, slots=True)
class DryRunDoc:
    """One dry-run profile: what Postfix would have been told instead of NOTFOUND."""

    would_change: Mapping[str, tuple[str, ...]]  # level -> destinations
    answers: Mapping[str, int]  # level -> answers counted since start

    def to_json(self) -> JsonObject:
        return {"would_change": _names_json(self.would_change), "answers": dict(self.answers)}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("dry_run", value)
        return cls(f.obj("would_change", lambda v: _names_table("would_change", v)),
                   f.obj("answers", lambda v: _count_table("answers", v)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReportResult:
    since: float
    now: float
    dry_run: Mapping[str, DryRunDoc]  # profile -> what it would have changed
    changes: tuple[ChangeRow, ...]
    levels: Mapping[str, Mapping[str, tuple[str, ...]]]  # profile -> level -> destinations
    rules: Mapping[str, Mapping[str, int]]  # profile -> rule -> destinations decided by it
    temp: TempSummary
    held: tuple[HeldRow, ...]
    sts_failing: tuple[StsFailingRow, ...]

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

    def to_json(self) -> JsonObject:
        return {
            "since": self.since,
            "now": self.now,
            "dry_run": {name: d.to_json() for name, d in self.dry_run.items()},
            "changes": [c.to_json() for c in self.changes],
            "levels": {p: _names_json(t) for p, t in self.levels.items()},
            "rules": {p: _counts_json(t) for p, t in self.rules.items()},
            "temp": self.temp.to_json(),
            "held": [h.to_json() for h in self.held],
            "sts_failing": [s.to_json() for s in self.sts_failing],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("report", value)
        return cls(
            f.number("since"),
            f.number("now"),
            f.table("dry_run", lambda _what, v: DryRunDoc.from_json(v)),
            f.objs("changes", ChangeRow.from_json),
            f.table("levels", _names_table),
            f.table("rules", _count_table),
            f.obj("temp", TempSummary.from_json),
            f.objs("held", HeldRow.from_json),
            f.objs("sts_failing", StsFailingRow.from_json),
        )
