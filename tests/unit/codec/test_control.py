"""The control protocol codec: framing, requests, replies, results."""

from __future__ import annotations

import contextlib
import json
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec import control
from policyd.codec.control import (
    MAX_LINE,
    NEED_DATA,
    ControlProtocolError,
    ErrorCode,
    Failure,
    JsonValue,
    Ok,
    evidence,
    results,
)
from policyd.codec.control.report import ReportResult
from policyd.codec.destination import parse_key
from policyd.codec.postfix_policy import parse as parse_policy

REQUESTS: list[control.Request] = [
    control.OverrideSet(
        parse_key("Example.COM."), parse_policy("secure match=.example.net"), 1800.0, "broken"
    ),
    control.OverrideSet(parse_key("[mx.example.org]:587"), parse_policy("encrypt")),
    control.OverrideSet(
        parse_key("example.net"), parse_policy("fingerprint match=AB:CD|EF:01"), None, "ü"
    ),
    control.OverrideDel(parse_key("example.com")),
    control.OverrideList(),
    control.Explain(parse_key("bücher.example")),
    control.Probe(parse_key("example.com"), wait=True),
    control.Flush(parse_key("example.com")),
    control.Flush(None),
    control.Flush(None, include_mta_sts=True),
    control.Report(3600.0),
    control.Status(),
    control.Reload(),
]


def stream() -> bytes:
    return b"".join(control.encode_request(r) for r in REQUESTS)


def drain(decoder: control.LineDecoder[control.Request]) -> list[control.Request]:
    out: list[control.Request] = []
    while (msg := decoder.next_message()) is not NEED_DATA:
        out.append(msg)
    return out


def test_round_trip_whole() -> None:
    dec = control.request_decoder()
    dec.receive_data(stream())
    assert drain(dec) == REQUESTS
    assert dec.buffered == 0


def test_round_trip_byte_by_byte() -> None:
    dec = control.request_decoder()
    got: list[control.Request] = []
    for i in range(len(stream())):
        dec.receive_data(stream()[i : i + 1])
        got += drain(dec)
    assert got == REQUESTS


def test_trailing_partial_line_waits() -> None:
    dec = control.request_decoder()
    dec.receive_data(control.encode_request(control.Status()) + b'{"v": 1, "cmd": "sta')
    assert drain(dec) == [control.Status()]
    assert dec.buffered > 0
    dec.receive_data(b'tus"}\n')
    assert drain(dec) == [control.Status()]


def test_wire_shape() -> None:
    line = control.encode_request(control.Explain(parse_key("EXAMPLE.com")))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "cmd": "explain", "args": {"domain": "example.com"}}


def test_oversize_line_is_fatal() -> None:
    dec = control.request_decoder(max_line=100)
    dec.receive_data(b"x" * 100)
    with pytest.raises(ControlProtocolError) as info:
        dec.next_message()
    assert info.value.fatal
    with pytest.raises(ControlProtocolError):  # and stays broken
        dec.next_message()


def test_line_of_exactly_max_line_is_accepted() -> None:
    line = control.encode_request(control.Status())
    dec = control.request_decoder(max_line=len(line))
    dec.receive_data(line)
    assert dec.next_message() == control.Status()


def test_default_cap_is_64k() -> None:
    assert MAX_LINE == 64 * 1024
    dec = control.request_decoder()
    dec.receive_data(b'{"v":1,"cmd":"status","args":{"pad":"' + b"a" * MAX_LINE)
    with pytest.raises(ControlProtocolError):
        dec.next_message()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"cmd": "status"}', "version"),
        (b'{"v": 2, "cmd": "status"}', "version"),
        (b'{"v": true, "cmd": "status"}', "version"),
        (b'{"v": 1}', "command"),
        (b'{"v": 1, "cmd": "shutdown"}', "unknown command"),
        (b'{"v": 1, "cmd": "status", "args": []}', "args"),
        (b'{"v": 1, "cmd": "status", "args": {"x": 1}}', "unknown argument"),
        (b'{"v": 1, "cmd": "explain", "args": {}}', "domain"),
        (b'{"v": 1, "cmd": "explain", "args": {"domain": "a b"}}', "bad destination"),
        (b'{"v": 1, "cmd": "explain", "args": {"domain": "-x-.com"}}', "bad destination"),
        (b'{"v": 1, "cmd": "override-set", "args": {"domain": "a.com"}}', "policy"),
        (
            b'{"v": 1, "cmd": "override-set", "args": {"domain": "a.com", "policy": "mandatory"}}',
            "bad policy",
        ),
        (
            b'{"v": 1, "cmd": "override-set", "args": {"domain": "a.com", "policy": "may",'
            b' "expires": -5}}',
            "expires",
        ),
        (
            b'{"v": 1, "cmd": "override-set", "args": {"domain": "a.com", "policy": "may",'
            b' "expires": 1e999}}',
            "expires",
        ),
        (b'{"v": 1, "cmd": "report", "args": {"since": "1d"}}', "seconds"),
        (b'{"v": 1, "cmd": "report", "args": {"since": 10' + b"0" * 400 + b"}}", "range"),
        (b'{"v": 1, "cmd": "probe", "args": {"domain": "a.com", "wait": 1}}', "true or false"),
        (b'{"v": 1, "cmd": "probe", "args": {"domain": ".a.com"}}', "probed"),
        (b'{"v": 1, "cmd": "probe", "args": {"domain": "[192.0.2.1]"}}', "probed"),
    ],
)
def test_bad_requests_are_protocol_errors_and_keep_the_stream(line: bytes, needle: str) -> None:
    dec = control.request_decoder()
    dec.receive_data(line + b"\n" + control.encode_request(control.Status()))
    with pytest.raises(ControlProtocolError) as info:
        dec.next_message()
    assert needle in info.value.message
    assert not info.value.fatal
    assert info.value.code is ErrorCode.USAGE
    assert dec.next_message() == control.Status()


def test_comment_must_be_one_short_line() -> None:
    with pytest.raises(ControlProtocolError):
        control.OverrideSet(parse_key("a.com"), parse_policy("may"), comment="a\nb")
    with pytest.raises(ControlProtocolError):
        control.OverrideSet(parse_key("a.com"), parse_policy("may"), comment="x" * 501)
    for bad in ("esc \x1b]52;c;AAAA\x07", "tab\tin", "del\x7f", "u2028\u2028"):
        with pytest.raises(ControlProtocolError):
            control.OverrideSet(parse_key("a.com"), parse_policy("may"), comment=bad)


@pytest.mark.parametrize(
    "policy",
    [
        "verify match=.victim.example,tafile=/etc/passwd",
        "encrypt ciphers=high\x00 protocols=TLSv1.2",
    ],
)
def test_override_policy_cannot_inject_attributes(policy: str) -> None:
    # Postfix splits on ", \t\r\n": the comma would make tafile= an attribute of its own.
    line = json.dumps(
        {"v": 1, "cmd": "override-set", "args": {"domain": "victim.example", "policy": policy}}
    ).encode()
    with pytest.raises(ControlProtocolError, match="bad policy"):
        control.decode_request(line)


def test_flush_all_is_null_domain() -> None:
    line = control.encode_request(control.Flush(None))
    assert json.loads(line)["args"] == {"domain": None}


def test_command_write_classes() -> None:
    writes = {c for c in control.Command if c.writes}
    assert writes == {
        control.Command.OVERRIDE_SET,
        control.Command.OVERRIDE_DEL,
        control.Command.FLUSH,
        control.Command.PROBE,
        control.Command.RELOAD,
    }


REPLIES: list[control.Reply] = [
    Ok({"a": [1, 2.5, None, True, "ü"]}),
    Ok(None),
    Failure(ErrorCode.NOTFOUND, "no override for example.com"),
    Failure(ErrorCode.REFUSED, "nope"),
]


def test_replies_round_trip_whole_and_byte_by_byte() -> None:
    data = b"".join(control.encode_reply(r) for r in REPLIES)
    dec = control.reply_decoder()
    dec.receive_data(data)
    got: list[control.Reply] = []
    while (msg := dec.next_message()) is not NEED_DATA:
        got.append(msg)
    assert got == REPLIES
    dec = control.reply_decoder()
    got = []
    for i in range(len(data)):
        dec.receive_data(data[i : i + 1])
        while (msg := dec.next_message()) is not NEED_DATA:
            got.append(msg)
    assert got == REPLIES


def test_error_reply_wire_shape() -> None:
    line = control.encode_reply(Failure(ErrorCode.USAGE, "bad"))
    assert json.loads(line) == {"v": 1, "ok": False, "error": "bad", "code": "usage"}


def test_oversized_result_becomes_internal_failure() -> None:
    line = control.encode_reply(Ok("x" * MAX_LINE))
    assert len(line) <= MAX_LINE
    reply = control.decode_reply(line.rstrip(b"\n"))
    assert isinstance(reply, Failure) and reply.code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    "line",
    [
        b'{"v": 1}',
        b'{"v": 1, "ok": true}',
        b'{"v": 1, "ok": false, "error": "x"}',
        b'{"v": 1, "ok": false, "error": "x", "code": "weird"}',
        b'{"v": 1, "ok": "yes", "result": 1}',
    ],
)
def test_bad_replies(line: bytes) -> None:
    with pytest.raises(ControlProtocolError):
        control.decode_reply(line)


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_request_decoder_only_protocol_errors(chunks: list[bytes]) -> None:
    dec = control.request_decoder(max_line=256)
    for chunk in chunks:
        dec.receive_data(chunk)
        for _ in range(20):
            try:
                if dec.next_message() is NEED_DATA:
                    break
            except ControlProtocolError as exc:
                if exc.fatal:
                    return


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["example.com", "encrypt", "secure match=.example.net", "[192.0.2.1]"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@given(
    st.sampled_from([c.value for c in control.Command] + ["nope"]),
    st.dictionaries(
        st.sampled_from(["domain", "policy", "expires", "comment", "wait", "since", "x"]),
        json_values,
        max_size=5,
    ),
    st.sampled_from([1, 1.0, 2, None, "1", True]),
)
def test_fuzz_structured_requests_only_protocol_errors(
    cmd: str, args: dict[str, object], version: object
) -> None:
    line = json.dumps({"v": version, "cmd": cmd, "args": args}).encode()
    try:
        req = control.decode_request(line)
    except ControlProtocolError:
        return
    # Anything accepted re-encodes to a line that decodes to the same request.
    assert control.decode_request(control.encode_request(req).rstrip(b"\n")) == req


@given(st.binary(max_size=300))
def test_fuzz_reply_decoder_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ControlProtocolError):
        control.decode_reply(data)


def test_integer_beyond_the_digit_limit_is_a_protocol_error() -> None:
    """Security review L3: a 5000-digit integer raised a bare ValueError and dropped the
    connection without a reply."""
    line = b'{"v":1,"cmd":"status","args":{"x":' + b"9" * 5000 + b"}}\n"
    with pytest.raises(ControlProtocolError, match="not valid JSON"):
        control.decode_request(line)


# -- typed results ------------------------------------------------------------------------


def _explained() -> results.ExplainResult:
    from policyd.codec.control import evidence as ev
    from policyd.core.evidence import DnsStatus, MxKind, ProbeLevel, ProbeVerdict, StsMode

    tlsa = ev.TlsaDoc(3, 1, 1, "ab" * 32, True)
    host = ev.HostDoc("mx.example", 10, DnsStatus.SECURE, ("192.0.2.1",), "", DnsStatus.SECURE,
                      (tlsa,), "")  # fmt: skip
    dns = ev.DnsDoc(DnsStatus.SECURE, MxKind.LISTED, "", 1.0, 2.0, 3.0, (host,))
    policy = ev.StsPolicyDoc("id1", StsMode.ENFORCE, ("mx.example",), 86400, 1.0, 2.0, 9.0, True)
    damping = ev.DampingDoc(ProbeLevel.VERIFY, ProbeLevel.ENCRYPT, (), 2, 5.0, 6.0)
    probe_host = ev.ProbeHostDoc("mx.example", "192.0.2.1", ProbeVerdict.VALID, "", "TLSv1.3",
                                 "X", "aa", "bb", 4.0, 5.0)  # fmt: skip
    probe = ev.ProbeDoc(ProbeLevel.VERIFY, ("mx.example",), 4.0, 5.0, damping, (probe_host,))
    override = ev.OverrideDoc("example.com", "encrypt", None, None, True, "", "root", 1.0, 2.0)
    answers = (
        results.VerdictRow("postfix", "dane-only", "OK dane-only", "dane", "DANE: ok"),
        results.VerdictRow("dry", "secure,match=x", "NOTFOUND", "mta-sts", "r", "OK secure"),
    )
    return results.ExplainResult(
        "example.com", 10.0, answers, dns, ev.StsDoc(policy, "", False), probe, override
    )


def test_results_round_trip_through_json_text() -> None:
    doc = _explained()
    wire = json.loads(json.dumps(doc.to_json()))
    assert results.ExplainResult.from_json(wire) == doc
    assert wire["answers"][1] == {
        "profile": "dry", "level": "secure,match=x", "reply": "NOTFOUND", "rule": "mta-sts",
        "reason": "r", "dry_run": True, "would_reply": "OK secure",
    }  # fmt: skip
    assert [a.told for a in doc.answers] == ["dane-only", "NOTFOUND"]
    probe = control.Probe(parse_key("example.com"))
    assert results.decode_result(probe, wire) == doc
    queued = results.decode_result(probe, {"destination": "example.com", "queued": True})
    assert queued == results.ProbeQueued("example.com")


def test_results_tolerate_unknown_fields() -> None:
    wire = _explained().to_json()
    wire["added_later"] = {"x": 1}
    dns = wire["dns"]
    assert isinstance(dns, dict)
    dns["also_new"] = [1, 2]
    assert results.ExplainResult.from_json(wire) == _explained()


@pytest.mark.parametrize(
    ("path", "value"),
    [(("destination",), None), (("now",), "soon"), (("dns", "mx_status"), "maybe"),
     (("dns", "hosts"), {}), (("mta_sts", "pending"), 1), (("probe", "damping", "count"), 1.5),
     (("answers",), "postfix")],
)  # fmt: skip
def test_results_are_strict_on_known_fields(path: tuple[str, ...], value: JsonValue) -> None:
    wire = _explained().to_json()
    node: JsonValue = wire
    for key in path[:-1]:
        assert isinstance(node, dict)
        node = node[key]
    assert isinstance(node, dict)
    node[path[-1]] = value
    with pytest.raises(ControlProtocolError):
        results.ExplainResult.from_json(wire)
    del node[path[-1]]
    with pytest.raises(ControlProtocolError, match="no "):
        results.ExplainResult.from_json(wire)


def _every_result() -> list[results.Result]:
    """One of each result, with None, empty and dry-run variants beside the full ones."""
    from policyd.codec.control import report as rp

    explained = _explained()
    probe, override = explained.probe, explained.override
    assert probe is not None and override is not None
    bare = results.ExplainResult("x", 1, (), None, evidence.StsDoc(None, "err", True), None, None)
    fleet = results.FleetCounts("up", {"dane": {"ok": 1, "failed": 2}, "sts": {}}, 1, 2, 3)
    status = results.StatusResult(
        "1.0", 2.5, ("a", "b"), "redis", 3, None, results.CacheCounts(1, 2, 3),
        results.LookupCounts(1, 2, 3, 4), results.ProbeQueueCounts(1, 2, 3, 4, 5),
        results.FetchQueueCounts(1, 2, 3, 4), fleet, results.PrefetchCounts(5, 6, 7),
    )  # fmt: skip
    idle = results.StatusResult("1.0", 2, (), "sqlite", None, 4, results.CacheCounts(0, 0, 0),
                                results.LookupCounts(0, 0, 0, 0), None, None, None,
                                None)  # fmt: skip
    changes = (rp.ChangeRow(1.0, "a", "p", "secure", None, "r"),
               rp.ChangeRow(1.5, "b", "p", "x", "y", "r"))  # fmt: skip
    report = rp.ReportResult(
        1.0, 2.0, {"dry": rp.DryRunDoc({"secure": ("a", "b")}, {"secure": 3})}, changes,
        {"p": {"secure": ("a",)}}, {"p": {"dane": 2}},
        rp.TempSummary(3, (rp.TempRow("d", "p", "r"),)), (rp.HeldRow("h", probe),),
        (rp.StsFailingRow("d", "e", True),),
    )  # fmt: skip
    return [
        explained, bare, status, idle, report, results.ProbeQueued("a"), override,
        results.OverrideDeleted("b"), results.Overrides((override,)), results.Overrides(()),
        results.Flushed(None, 3, True), results.Flushed("a", 0, False), results.Reloaded(),
        results.Warmed(1, 2), results.Checked("a", "b", "c", "d", None),
        results.Checked("a", "b", "c", "d", "cannot"),
    ]  # fmt: skip


def test_every_result_class_round_trips_through_json_text() -> None:
    docs = _every_result()
    assert {type(d) for d in docs} == set(typing.get_args(results.Result))
    for doc in docs:
        assert type(doc).from_json(json.loads(json.dumps(doc.to_json()))) == doc


def test_result_wire_keys_in_order() -> None:
    """The wire documents keep their keys and order (man/policyctl.8, scripts)."""
    by_type = {type(d): d.to_json() for d in reversed(_every_result())}
    assert list(by_type[results.StatusResult]) == [
        "version", "uptime", "listeners", "store", "connections", "refused", "cache", "lookups",
        "probe", "mta_sts", "fleet", "prefetch",
    ]  # fmt: skip
    assert by_type[results.ProbeQueued] == {"destination": "a", "queued": True}
    assert by_type[results.OverrideDeleted] == {"destination": "b", "deleted": True}
    assert by_type[results.Reloaded] == {"reloaded": True}
    report = by_type[ReportResult]
    assert isinstance(report, dict)
    held = report["held"]
    assert isinstance(held, list) and isinstance(held[0], dict)
    assert list(held[0])[:3] == ["destination", "level", "verified_names"]
    assert report["levels"] == {"p": {"secure": ["a"]}}
    assert report["rules"] == {"p": {"dane": 2}}
