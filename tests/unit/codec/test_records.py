"""policyd.codec.records: what the previous version stored still loads; the event document;
the shared document checks. (Per-record field checks: test_records_override.py,
test_records_probe.py, test_mtasts.py.)"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec.records import (
    MAX_EVENT_CHARS,
    VERSION,
    event_from_json,
    event_to_json,
    override_from_json,
    override_to_json,
    probe_state_from_json,
    probe_state_to_json,
    sts_policy_from_json,
    sts_policy_to_json,
)
from policyd.core import evidence
from policyd.core.event import Event
from policyd.core.types import Rule
from tests.unit.codec.test_records_override import OVERRIDE

# Records exactly as policyd before this module wrote them (codec/override_record.py,
# sts_record.py and probe_record.py of main, e370755), as a store holds them today.
OLD_OVERRIDE = (
    '{"author": "root", "comment": "ticket 1234", "created_at": 1800000000.0, '
    '"expires_at": 1800000600.0, "policy": "secure match=.example.test servername=hostname"}'
)
OLD_NOTFOUND_OVERRIDE = (
    '{"author": "", "comment": "", "created_at": 0.0, "expires_at": null, "policy": null}'
)
OLD_STS = (
    '{"fetched_at":1800000000.0,"id":"20240501","max_age":604800,"mode":"enforce",'
    '"mx":["mx1.example.test","*.example.test"],"v":1}'
)
OLD_PROBE = (
    '{"hosts":[{"address":"192.0.2.1","cipher":"TLS_AES_256_GCM_SHA384","detail":"ok",'
    '"host":"mx.example.test","leaf_sha256":"' + "9f" * 32 + '","probed_at":1800000000.0,'
    '"protocol":"TLSv1.3","spki_sha256":"' + "4b" * 32 + '","verdict":"valid"}],'
    '"level":"verify","pending":"encrypt","pending_count":1,"pending_names":[],'
    '"pending_since":1799999000.0,"probed_at":1800000000.0,"v":1,'
    '"verified_names":["mx.example.test"]}'
)
# An event as PolicyService._log_change wrote it before events were structured.
OLD_EVENT = "level=encrypt profile=strict dry-run=yes reason=probe: encrypt previous=NOTFOUND"

EVENT = Event(
    1_800_000_000.5,
    "example.test",
    "strict",
    Rule.OVERRIDE,
    "encrypt",
    "override by root: moved to new host previous=dane-only",
    previous="dane-only",
    dry_run=True,
)


def test_records_of_the_previous_version_load() -> None:
    assert override_from_json("example.test", OLD_OVERRIDE) == OVERRIDE
    assert override_from_json("nf.test", OLD_NOTFOUND_OVERRIDE) == evidence.Override(
        "nf.test", None
    )
    assert sts_policy_from_json(OLD_STS) == evidence.StsPolicy(
        evidence.StsMode.ENFORCE,
        ("mx1.example.test", "*.example.test"),
        604800,
        "20240501",
        1_800_000_000.0,
    )
    host = evidence.ProbeHost(
        "mx.example.test",
        "192.0.2.1",
        evidence.ProbeVerdict.VALID,
        "ok",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        "9f" * 32,
        "4b" * 32,
        1_800_000_000.0,
    )
    assert probe_state_from_json(OLD_PROBE) == evidence.ProbeState(
        evidence.ProbeLevel.VERIFY,
        (host,),
        ("mx.example.test",),
        pending=evidence.ProbeLevel.ENCRYPT,
        pending_count=1,
        pending_since=1_799_999_000.0,
        probed_at=1_800_000_000.0,
    )


def test_every_record_carries_the_version() -> None:
    ov = override_from_json("example.test", OLD_OVERRIDE)
    texts = [
        override_to_json(ov),
        sts_policy_to_json(sts_policy_from_json(OLD_STS)),
        probe_state_to_json(probe_state_from_json(OLD_PROBE)),
        event_to_json(EVENT),
    ]
    assert [json.loads(t)["v"] for t in texts] == [VERSION] * 4
    assert override_from_json("example.test", texts[0]) == ov


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_override_of_another_version_is_refused(version: object) -> None:
    doc = json.loads(OLD_OVERRIDE)
    doc["v"] = version
    with pytest.raises(ValueError, match="version"):
        override_from_json("example.test", json.dumps(doc))


# -- events ---------------------------------------------------------------------------------


def test_event_round_trip() -> None:
    assert event_from_json(event_to_json(EVENT)) == EVENT
    first = Event(0.0, "[192.0.2.1]:587", "postfix", Rule.DEFAULT, "NOTFOUND", "no evidence")
    assert event_from_json(event_to_json(first)) == first


def test_a_reason_is_only_a_reason() -> None:
    """D3: the reason quotes outside text; whatever it says, it fills no other field."""
    first = Event(1.0, "a.example", "postfix", Rule.OVERRIDE, "encrypt", "x previous=dane-only")
    loaded = event_from_json(event_to_json(first))
    assert loaded.previous is None
    assert loaded.reason == "x previous=dane-only"


def test_the_old_text_format_is_not_an_event() -> None:
    with pytest.raises(ValueError):
        event_from_json(OLD_EVENT)


def _event_doc(**changes: object) -> str:
    doc = json.loads(event_to_json(EVENT))
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "[]",
        _event_doc(v=2),
        _event_doc(at=-1),
        _event_doc(at=10**400),
        _event_doc(at=True),
        _event_doc(key=""),
        _event_doc(key="a b"),
        _event_doc(key=None),
        _event_doc(profile=3),
        _event_doc(rule="whim"),
        _event_doc(level="secure match=x"),
        _event_doc(previous=""),
        _event_doc(previous=["dane"]),
        _event_doc(reason=None),
        _event_doc(dry_run="yes"),
        "x" * (MAX_EVENT_CHARS + 1),
        "[" * 10_000,
    ],
)
def test_event_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        event_from_json(text)


def test_event_reason_with_control_characters_is_kept_escaped() -> None:
    loaded = event_from_json(_event_doc(reason="two\nlines\x1b"))
    assert loaded.reason == "two\\nlines\\x1b"


@given(st.text(max_size=300))
def test_only_value_error_escapes_event_from_json(text: str) -> None:
    with contextlib.suppress(ValueError):
        event_from_json(text)
