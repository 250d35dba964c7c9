"""ProbeState JSON: round trips, strict decoding, and only ValueError escapes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec.records import probe_state_from_json, probe_state_to_json
from policyd.core.evidence import ProbeHost, ProbeLevel, ProbeState, ProbeVerdict

HOST = ProbeHost(
    host="mx.example.test",
    address="2001:db8::25",
    verdict=ProbeVerdict.VALID,
    detail="issued via CN=Test Root CA",
    protocol="TLSv1.3",
    cipher="TLS_AES_256_GCM_SHA384",
    leaf_sha256="AB:CD",
    spki_sha256="EF:01",
    probed_at=1_700_000_000.5,
)
STATE = ProbeState(
    level=ProbeLevel.VERIFY,
    hosts=(HOST,),
    verified_names=("mx.example.test",),
    pending=ProbeLevel.ENCRYPT,
    pending_count=2,
    pending_since=1_699_990_000.0,
    probed_at=1_700_000_000.5,
)


def test_round_trip() -> None:
    assert probe_state_from_json(probe_state_to_json(STATE)) == STATE


def test_round_trip_held_names() -> None:
    held = ProbeState(
        ProbeLevel.VERIFY,
        (HOST,),
        ("mx.example.test",),
        pending=ProbeLevel.VERIFY,
        pending_names=("mx.other.test",),
        pending_count=1,
        pending_since=5.0,
    )
    assert probe_state_from_json(probe_state_to_json(held)) == held


def test_record_without_pending_names_loads() -> None:
    doc = _doc()
    del doc["pending_names"]  # written before the field existed
    assert probe_state_from_json(json.dumps(doc)) == STATE


def test_round_trip_empty_state() -> None:
    empty = ProbeState(level=None)
    assert probe_state_from_json(probe_state_to_json(empty)) == empty


def _doc() -> dict[str, object]:
    doc = json.loads(probe_state_to_json(STATE))
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("level", "strong"),
        ("level", 3),
        ("pending", "verify!"),
        ("pending_count", -1),
        ("pending_count", True),
        ("pending_count", 1.5),
        ("probed_at", "yesterday"),
        ("probed_at", -5),
        ("hosts", {}),
        ("hosts", [1]),
        ("hosts", [{"host": "x"}]),
        ("verified_names", [1]),
        ("verified_names", "mx"),
        # A verified name becomes a secure match= pattern: no attribute smuggled in.
        ("verified_names", ["x,tafile=/etc/passwd"]),
        ("verified_names", ["mx.example.test servername=evil"]),
        ("verified_names", ["mx\x00"]),
        ("verified_names", ["a:b"]),
        ("verified_names", [""]),
        ("pending_names", ["x,tafile=/etc/passwd"]),
        ("pending_names", "mx"),
        # A JSON integer beyond a float's range (OverflowError before the fix).
        ("probed_at", 10**400),
        ("pending_since", 10**400),
    ],
)
def test_rejects_bad_fields(field: str, value: object) -> None:
    doc = _doc()
    doc[field] = value
    with pytest.raises(ValueError):
        probe_state_from_json(json.dumps(doc))


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("verdict", "great", None), ("probed_at", 10**400, "out of range")],
    ids=["unknown-verdict", "huge-integer-time"],
)
def test_rejects_bad_host_fields(field: str, value: object, says: str | None) -> None:
    doc = _doc()
    hosts = doc["hosts"]
    assert isinstance(hosts, list)
    hosts[0][field] = value
    with pytest.raises(ValueError, match=says):
        probe_state_from_json(json.dumps(doc))


def test_rejects_deep_nesting() -> None:
    with pytest.raises(ValueError, match="nested"):
        probe_state_from_json("[" * 100_000)


@pytest.mark.parametrize("text", ["", "null", "[]", "{", '{"v": 1}', "1e999", "NaN"])
def test_rejects_non_documents(text: str) -> None:
    with pytest.raises(ValueError):
        probe_state_from_json(text)


def test_rejects_nan_time() -> None:
    doc = _doc()
    doc["probed_at"] = float("nan")
    text = json.dumps(doc)
    assert "NaN" in text
    with pytest.raises(ValueError, match="finite"):
        probe_state_from_json(text)


@given(st.text(max_size=300))
def test_only_value_error_escapes(text: str) -> None:
    with contextlib.suppress(ValueError):
        probe_state_from_json(text)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**308, max_value=10**400)  # beyond a float: OverflowError
    | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(sorted(_doc())), _json))
def test_only_value_error_escapes_for_json_objects(patch: dict[str, object]) -> None:
    doc = _doc()
    doc.update(patch)
    with contextlib.suppress(ValueError):
        probe_state_from_json(json.dumps(doc))


_hosts = st.builds(
    ProbeHost,
    host=st.text(max_size=20),
    address=st.text(max_size=20),
    verdict=st.sampled_from(ProbeVerdict),
    detail=st.text(max_size=40),
    probed_at=st.floats(min_value=0, max_value=4e9),
)
_levels = st.none() | st.sampled_from(ProbeLevel)


@given(
    st.builds(
        ProbeState,
        level=_levels,
        hosts=st.lists(_hosts, max_size=5).map(tuple),
        verified_names=st.lists(
            st.from_regex(r"\A[a-z0-9]{1,8}(\.[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?)*\Z"), max_size=3
        ).map(tuple),
        pending=_levels,
        pending_names=st.lists(st.sampled_from(["mx.a.test", "b.test"]), max_size=2).map(tuple),
        pending_count=st.integers(min_value=0, max_value=100),
        pending_since=st.floats(min_value=0, max_value=4e9),
        probed_at=st.floats(min_value=0, max_value=4e9),
    )
)
def test_round_trip_property(state: ProbeState) -> None:
    assert probe_state_from_json(probe_state_to_json(state)) == state


def test_stored_detail_with_control_characters_loads_escaped() -> None:
    """Security review L3: a record written before details were escaped (or by another
    fleet member) cannot bring terminal control sequences back into policyctl explain."""
    doc = json.loads(probe_state_to_json(STATE))
    doc["hosts"][0]["detail"] = "554 \x1b]52;c;cHduZWQ=\x07"
    loaded = probe_state_from_json(json.dumps(doc))
    assert loaded.hosts[0].detail == "554 \\x1b]52;c;cHduZWQ=\\x07"
    assert probe_state_from_json(probe_state_to_json(loaded)) == loaded
