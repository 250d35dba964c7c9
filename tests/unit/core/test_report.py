"""policyd.core.report: policyctl report as aggregation over typed events and verdicts, and
the review's D3 (a reason quoting ``previous=`` faked a level change)."""

from __future__ import annotations

import pytest

from policyd.codec.control.report import ReportResult
from policyd.codec.destination import parse_key
from policyd.codec.postfix_policy import parse
from policyd.core.event import Event
from policyd.core.evidence import Override, ProbeLevel, ProbeState, StsEvidence, StsMode, StsPolicy
from policyd.core.profile import DEFAULT_PROFILES
from policyd.core.report import Report, ReportLimits, StsFailing, TempNow, build_report
from policyd.core.types import Rule, Verdict, notfound, policy, temp
from policyd.service import level_text
from tests.unit.test_service import make

NOW = 1_800_000_000.0
LIMITS = ReportLimits(changes=1000, names=1000)
HELD = ProbeState(ProbeLevel.VERIFY, pending=ProbeLevel.ENCRYPT, pending_count=1)
POLICY = StsPolicy(StsMode.ENFORCE, ("mx.a.example",), 86400, "1", NOW - 10)


def report(
    events: list[Event],
    latest: dict[tuple[str, str], Verdict] | None = None,
    *,
    since: float = 0.0,
    limits: ReportLimits = LIMITS,
    probes: dict[str, ProbeState] | None = None,
    sts: dict[str, StsEvidence] | None = None,
) -> Report:
    return build_report(
        events,
        latest or {},
        since=since,
        now=NOW,
        limits=limits,
        level_of=level_text,
        probe_of=(probes or {}).get,
        sts_of=lambda domain: (sts or {}).get(domain, StsEvidence()),
    )


def change(at: float, key: str, level: str, previous: str | None = None) -> Event:
    return Event(at, key, "postfix", Rule.PROBE, level, f"probe: {level}", previous=previous)


def test_changes_since_newest_last_and_bounded() -> None:
    events = [change(float(i), f"k{i}.example", "encrypt") for i in range(10)]
    assert report(events, since=7.0).changes == tuple(events[7:])
    assert report(events, limits=ReportLimits(changes=3, names=1)).changes == tuple(events[7:])
    assert report(events, limits=ReportLimits(changes=0, names=1)).changes == ()


def test_levels_rules_and_temp_per_profile() -> None:
    latest = {
        ("postfix", "b.example"): policy(Rule.DANE, "dane", parse("dane-only")),
        ("postfix", "a.example"): policy(Rule.PROBE, "probe", parse("encrypt")),
        ("postfix", "c.example"): policy(Rule.PROBE, "probe", parse("encrypt")),
        ("postfix", "d.example"): temp(Rule.DNS_FAILURE, "SERVFAIL"),
        ("strict", "a.example"): notfound(Rule.DEFAULT, "no evidence"),
    }
    got = report([], latest, limits=ReportLimits(changes=10, names=1))
    assert got.levels == {
        "postfix": {"encrypt": ("a.example",), "dane-only": ("b.example",), "TEMP": ("d.example",)},
        "strict": {"NOTFOUND": ("a.example",)},
    }
    assert got.rules == {
        "postfix": {Rule.PROBE: 2, Rule.DANE: 1, Rule.DNS_FAILURE: 1},
        "strict": {Rule.DEFAULT: 1},
    }
    assert got.temp == (TempNow("d.example", "postfix", "SERVFAIL"),)


def test_held_and_failing_mta_sts_by_policy_domain() -> None:
    verdict = notfound(Rule.DEFAULT, "none")
    keys = [
        "a.example",
        "b.example:587",
        "[192.0.2.1]",
        ".parent.example",
        "[smtp.relay.example]",
        "[submit.relay.example]:587",
    ]
    got = report(
        [],
        {("postfix", k): verdict for k in keys},
        probes={"b.example:587": HELD, "a.example": ProbeState(ProbeLevel.VERIFY)},
        sts={
            "a.example": StsEvidence(POLICY, error="policy fetch: HTTP 404"),
            "b.example": StsEvidence(error="timeout"),
            # a smart host on port 25 is its own policy domain (RFC 8461 3.4)
            "smtp.relay.example": StsEvidence(error="no TXT"),
            # never asked: an IP literal, a parent form, another port have no MTA-STS domain
            "[192.0.2.1]": StsEvidence(error="x"),
            ".parent.example": StsEvidence(error="x"),
            "submit.relay.example": StsEvidence(error="x"),
        },
    )
    assert got.held == (("b.example:587", HELD),)
    assert got.sts_failing == (
        StsFailing("[smtp.relay.example]", "no TXT", cached=False),
        StsFailing("a.example", "policy fetch: HTTP 404", cached=True),
        StsFailing("b.example:587", "timeout", cached=False),
    )


def test_report_doc_is_the_control_protocols_json() -> None:
    latest = {("postfix", "a.example"): policy(Rule.PROBE, "probe", parse("encrypt"))}
    events = [change(NOW - 5, "a.example", "encrypt", previous="NOTFOUND")]
    doc = ReportResult.of(report(events, latest), temp_answers=3, dry_run={}).to_json()
    assert doc == {
        "since": 0.0,
        "now": NOW,
        "dry_run": {},
        "changes": [
            {
                "at": NOW - 5,
                "destination": "a.example",
                "profile": "postfix",
                "level": "encrypt",
                "previous": "NOTFOUND",
                "reason": "probe: encrypt",
            }
        ],
        "levels": {"postfix": {"encrypt": ["a.example"]}},
        "rules": {"postfix": {"probe": 1}},
        "temp": {"answers": 3, "destinations": []},
        "held": [],
        "sts_failing": [],
    }


@pytest.mark.parametrize("comment", ["moved to new host previous=dane-only", "previous=dane-only"])
async def test_a_reason_quoting_previous_does_not_fake_a_level_change(comment: str) -> None:
    """D3 and the security review's L8d: an override comment (free text from the control
    socket; other reasons quote remote text) once became the report's "previous" column,
    because the event was one line parsed back from its last ``previous=``."""
    svc, _, store = make()
    await svc.set_override(
        Override("example.test", parse("encrypt"), comment=comment, author="root")
    )
    dest = parse_key("example.test")
    await svc.answer(dest, DEFAULT_PROFILES[0])
    await svc.writes.flush()
    events = await store.events(0.0)
    assert [(e.level, e.previous) for e in events] == [("encrypt", None)]
    assert "previous=dane-only" in events[0].reason
    doc = ReportResult.of(report(events, svc.remembered()), temp_answers=0, dry_run={}).to_json()
    changes = doc["changes"]
    assert isinstance(changes, list) and isinstance(changes[0], dict)
    assert (changes[0]["level"], changes[0]["previous"]) == ("encrypt", None)
    assert changes[0]["reason"] == events[0].reason


async def test_events_of_the_service_name_profile_rule_and_previous_level() -> None:
    svc, _, store = make()
    dest = parse_key("example.test")
    strict = next(p for p in DEFAULT_PROFILES if p.name != "postfix")
    await svc.answer(dest, strict)
    await svc.set_override(Override("example.test", parse("encrypt"), author="root"))
    await svc.answer(dest, strict)
    await svc.writes.flush()
    first, second = await store.events(0.0)
    assert (first.profile, first.level, first.previous) == (strict.name, "NOTFOUND", None)
    assert (second.rule, second.level, second.previous) == (Rule.OVERRIDE, "encrypt", "NOTFOUND")
    assert second.reason.startswith("override by root")
