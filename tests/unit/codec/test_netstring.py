"""policyd.codec.netstring: strict sans-I/O netstrings (STYLE.md habit 9)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec.netstring import (
    DEFAULT_MAX_PAYLOAD,
    NEED_DATA,
    Decoder,
    NetstringError,
    encode,
)


def drain(dec: Decoder) -> list[bytes]:
    out: list[bytes] = []
    while True:
        item = dec.next_payload()
        if item is NEED_DATA:
            return out
        assert isinstance(item, bytes)
        out.append(item)


def feed_chunks(chunks: list[bytes], max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[bytes]:
    dec = Decoder(max_payload)
    out: list[bytes] = []
    for chunk in chunks:
        dec.receive_data(chunk)
        out += drain(dec)
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- well-formed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "payload"),
    [
        (b"0:,", b""),
        (b"1:a,", b"a"),
        (b"12:hello world!,", b"hello world!"),
        (b"5:a,b:c,", b"a,b:c"),
        (b"3:\x00\xff\n,", b"\x00\xff\n"),
        (b"10:postfix ex,", b"postfix ex"),
    ],
)
def test_single_whole_and_bytewise(wire: bytes, payload: bytes) -> None:
    assert feed_chunks([wire]) == [payload]
    assert feed_chunks(bytewise(wire)) == [payload]


def test_empty_decoder_needs_data() -> None:
    dec = Decoder()
    assert dec.next_payload() is NEED_DATA
    assert dec.buffered == 0


def test_several_payloads_in_one_chunk() -> None:
    wire = b"3:abc,0:,5:hello,1: ,"
    assert feed_chunks([wire]) == [b"abc", b"", b"hello", b" "]
    assert feed_chunks(bytewise(wire)) == [b"abc", b"", b"hello", b" "]


@pytest.mark.parametrize("trailing", [b"", b"1", b"12", b"12:", b"12:hello", b"5:hello"])
def test_trailing_partial_data_is_kept(trailing: bytes) -> None:
    dec = Decoder()
    dec.receive_data(b"3:abc," + trailing)
    assert dec.next_payload() == b"abc"
    assert dec.next_payload() is NEED_DATA
    assert dec.buffered == len(trailing)
    assert dec.next_payload() is NEED_DATA  # asking again changes nothing


def test_trailing_partial_completed_later() -> None:
    dec = Decoder()
    dec.receive_data(b"3:abc,5:he")
    assert drain(dec) == [b"abc"]
    dec.receive_data(b"llo")
    assert dec.next_payload() is NEED_DATA  # the ',' is still missing
    dec.receive_data(b",")
    assert drain(dec) == [b"hello"]
    assert dec.buffered == 0


def test_payload_exactly_at_limit() -> None:
    payload = b"x" * 100
    assert feed_chunks([encode(payload)], max_payload=100) == [payload]


def test_default_limit_accepts_postfix_maximum() -> None:
    payload = b"k" * DEFAULT_MAX_PAYLOAD
    assert feed_chunks([encode(payload)]) == [payload]


def test_zero_limit_accepts_only_empty() -> None:
    assert feed_chunks([b"0:,"], max_payload=0) == [b""]
    with pytest.raises(NetstringError):
        feed_chunks([b"1:a,"], max_payload=0)


def test_negative_limit_rejected() -> None:
    with pytest.raises(ValueError):
        Decoder(-1)


# --- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"a:b,", id="non-digit-length"),
        pytest.param(b"1a:b,", id="digit-then-letter"),
        pytest.param(b"-1:a,", id="negative"),
        pytest.param(b"+1:a,", id="plus-sign"),
        pytest.param(b" 1:a,", id="leading-space"),
        pytest.param(b"1 :a,", id="space-before-colon"),
        pytest.param(b"0x1:a,", id="hex"),
        pytest.param(b"\xd9\xa1:a,", id="non-ascii-digit"),
        pytest.param(b"01:a,", id="leading-zero"),
        pytest.param(b"00:,", id="double-zero"),
        pytest.param(b"000000:,", id="many-zeros"),
        pytest.param(b":a,", id="no-length"),
        pytest.param(b"3abc,", id="missing-colon"),
        pytest.param(b"1234567:", id="too-many-digits"),
        pytest.param(b"99999999999999999999999:", id="absurd-length"),
        pytest.param(b"10101:", id="over-default-limit"),
        pytest.param(b"3:abc;", id="wrong-terminator"),
        pytest.param(b"3:abcd,", id="payload-longer-than-length"),
        pytest.param(b"3:ab,x", id="payload-shorter-than-length"),
        pytest.param(b"3:abc\n", id="newline-terminator"),
        pytest.param(b"0:;", id="empty-wrong-terminator"),
    ],
)
def test_malformed(wire: bytes) -> None:
    with pytest.raises(NetstringError):
        feed_chunks([wire])
    with pytest.raises(NetstringError):
        feed_chunks(bytewise(wire))
    with pytest.raises(NetstringError):
        feed_chunks([b"1:x," + wire])  # after a good one


def test_missing_comma_is_not_an_error_until_the_byte_arrives() -> None:
    dec = Decoder()
    dec.receive_data(b"3:abc")
    assert dec.next_payload() is NEED_DATA
    dec.receive_data(b"X")
    with pytest.raises(NetstringError):
        dec.next_payload()


def test_over_limit_raised_as_soon_as_length_known() -> None:
    dec = Decoder(max_payload=100)
    dec.receive_data(b"101")
    assert dec.next_payload() is NEED_DATA  # three digits fit a limit of 100
    dec.receive_data(b":")
    with pytest.raises(NetstringError, match="limit"):
        dec.next_payload()  # no payload byte sent yet


def test_too_many_digits_raised_before_colon() -> None:
    dec = Decoder(max_payload=100)
    dec.receive_data(b"1000")  # four digits can never be <= 100
    with pytest.raises(NetstringError):
        dec.next_payload()


def test_non_digit_raised_before_colon() -> None:
    dec = Decoder()
    dec.receive_data(b"1x")
    with pytest.raises(NetstringError):
        dec.next_payload()


def test_partial_length_waits() -> None:
    dec = Decoder()
    for byte in bytewise(b"10100"):
        dec.receive_data(byte)
        assert dec.next_payload() is NEED_DATA


# --- encode / round trip -------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "wire"),
    [(b"", b"0:,"), (b"a", b"1:a,"), (b"hello world", b"11:hello world,"), (b"%d", b"2:%d,")],
)
def test_encode(payload: bytes, wire: bytes) -> None:
    assert encode(payload) == wire


@given(st.binary(max_size=300))
def test_encode_decode_round_trip(payload: bytes) -> None:
    assert feed_chunks([encode(payload)]) == [payload]


@given(st.lists(st.binary(max_size=200), max_size=8), st.data())
def test_round_trip_random_split_points(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_chunks(chunks) == payloads


@settings(max_examples=500)
@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_only_raise_netstring_error(blob: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    limit = data.draw(st.integers(0, 20000))
    try:
        out = feed_chunks(chunks, max_payload=limit)
    except NetstringError:
        return
    assert all(len(p) <= limit for p in out)


@given(st.binary(min_size=1, max_size=40).filter(lambda b: not b.isdigit()), st.binary())
def test_valid_prefix_then_junk(junk: bytes, rest: bytes) -> None:
    """After a good netstring, garbage raises the protocol error, never anything else."""
    wire = encode(b"ok") + junk + rest
    try:
        out = feed_chunks([wire])
    except NetstringError:
        return
    assert out[0] == b"ok"
