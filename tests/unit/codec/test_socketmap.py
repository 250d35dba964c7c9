"""policyd.codec.socketmap: ``NAME KEY`` requests and status replies (socketmap_table(5))."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec import netstring
from policyd.codec.socketmap import (
    MAX_NAME,
    MAX_REPLY,
    ReplyTooLong,
    Request,
    SocketmapError,
    Status,
    encoded,
    parse_request,
    reply,
    reply_for,
)


@pytest.mark.parametrize(
    ("payload", "name", "key"),
    [
        (b"postfix example.com", "postfix", "example.com"),
        (b"strict [mx.example.com]:587", "strict", "[mx.example.com]:587"),
        (b"postfix .example.com", "postfix", ".example.com"),
        ("postfix bücher.example".encode(), "postfix", "bücher.example"),
        (b"n k", "n", "k"),
        (b"postfix a b", "postfix", "a b"),  # only the first space separates
        (b"x" * MAX_NAME + b" k", "x" * MAX_NAME, "k"),
    ],
)
def test_parse_request(payload: bytes, name: str, key: str) -> None:
    assert parse_request(payload) == Request(name, key)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"postfix", id="no-space"),
        pytest.param(b" example.com", id="empty-name"),
        pytest.param(b"postfix ", id="empty-key"),
        pytest.param(b"x" * (MAX_NAME + 1) + b" k", id="long-name"),
        pytest.param("pöstfix k".encode(), id="non-ascii-name"),
        pytest.param(b"postfix \xff\xfe", id="bad-utf8-key"),
        pytest.param(b"postfix exa\x00mple.com", id="nul-in-key"),
        pytest.param(b"postfix example.com\n", id="newline-in-key"),
        pytest.param(b"post\x01fix example.com", id="control-in-name"),
        pytest.param(b"postfix \x7f", id="del-in-key"),
    ],
)
def test_parse_request_errors(payload: bytes) -> None:
    with pytest.raises(SocketmapError):
        parse_request(payload)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_parse_request_only_raises_socketmap_error(payload: bytes) -> None:
    try:
        req = parse_request(payload)
    except SocketmapError:
        return
    assert req.name and req.key
    assert f"{req.name} {req.key}".encode() == payload


@pytest.mark.parametrize(
    ("status", "data", "wire"),
    [
        (Status.OK, "secure match=mx.example.com", b"OK secure match=mx.example.com"),
        (Status.NOTFOUND, "", b"NOTFOUND "),
        (Status.NOTFOUND, "ignored reason", b"NOTFOUND "),
        (Status.TEMP, "MX lookup failed", b"TEMP MX lookup failed"),
        (Status.TIMEOUT, "budget", b"TIMEOUT budget"),
        (Status.PERM, "bad key", b"PERM bad key"),
        (Status.TEMP, "two\r\nlines", b"TEMP two  lines"),
        (Status.OK, "é", "OK é".encode()),
    ],
)
def test_reply(status: Status, data: str, wire: bytes) -> None:
    assert reply(status, data) == wire


def test_ok_reply_over_the_limit_is_refused_not_cut() -> None:
    """Security review H2: a policy cut mid-attribute is another policy; the caller must
    answer something else (TEMP), so the codec refuses to build it."""
    fits = "x" * (MAX_REPLY - len("OK "))
    assert len(reply(Status.OK, fits)) == MAX_REPLY
    with pytest.raises(ReplyTooLong) as info:
        reply(Status.OK, fits + "x")
    assert info.value.size == MAX_REPLY + 1
    with pytest.raises(ReplyTooLong):
        reply(Status.OK, "é" * MAX_REPLY)


@pytest.mark.parametrize("status", [Status.TEMP, Status.PERM, Status.TIMEOUT])
def test_explaining_reply_capped_at_protocol_limit(status: Status) -> None:
    out = reply(status, "x" * (2 * MAX_REPLY))
    assert len(out) == MAX_REPLY
    assert out.startswith(status.value.encode() + b" xxx")


def test_reply_cap_keeps_utf8_valid() -> None:
    """Cutting in the middle of a multibyte character sends Postfix invalid UTF-8."""
    out = reply(Status.TEMP, "é" * MAX_REPLY)
    assert len(out) <= MAX_REPLY
    out.decode("utf-8")  # raises if a character was cut in half


@given(st.sampled_from(list(Status)), st.text(max_size=300))
def test_reply_is_one_line_within_limit(status: Status, data: str) -> None:
    out = reply(status, data)
    assert len(out) <= MAX_REPLY
    assert b"\n" not in out and b"\r" not in out
    assert out.startswith(status.value.encode() + b" ")
    # The reply travels as a netstring the decoder reads back unchanged.
    dec = netstring.Decoder(max_payload=MAX_REPLY)
    dec.receive_data(netstring.encode(out))
    assert dec.next_payload() == out


def test_request_through_netstring_bytewise_and_trailing() -> None:
    wire = netstring.encode(b"postfix example.com") + netstring.encode(b"strict x.org") + b"5:pos"
    dec = netstring.Decoder()
    got: list[Request] = []
    for i in range(len(wire)):
        dec.receive_data(wire[i : i + 1])
        item = dec.next_payload()
        if isinstance(item, bytes):
            got.append(parse_request(item))
    assert got == [Request("postfix", "example.com"), Request("strict", "x.org")]
    assert dec.buffered == 5


# -- a verdict as a reply ----------------------------------------------------------------


def test_reply_for_each_outcome() -> None:
    from policyd.codec.postfix_policy import parse
    from policyd.core.types import Outcome, Rule, Verdict

    policy = Verdict(Outcome.POLICY, Rule.DANE, "signed", parse("dane-only"))
    assert reply_for(policy) == b"OK dane-only"
    assert reply_for(Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "nothing")) == b"NOTFOUND "
    assert reply_for(Verdict(Outcome.TEMP, Rule.DNS_FAILURE, "SERVFAIL")) == b"TEMP SERVFAIL"


def test_reply_for_a_policy_too_long_raises() -> None:
    from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict

    names = tuple(f"mx{i:05d}.example.test" for i in range(5000))
    huge = Verdict(Outcome.POLICY, Rule.OVERRIDE, "set", Policy(TlsLevel.SECURE, names))
    with pytest.raises(ReplyTooLong):
        reply_for(huge)


def test_encoded_is_one_netstring() -> None:
    assert encoded(Status.PERM, "bad key") == netstring.encode(b"PERM bad key")
