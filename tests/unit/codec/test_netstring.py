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
    parse_whole,
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


# -- parse_whole: the hot path's one-request shortcut agrees with the Decoder ---------------


def decoder_whole(data: bytes, max_payload: int) -> bytes | None:
    """What parse_whole must return: the payload when a Decoder takes exactly one from
    ``data`` and has nothing left over, else None."""
    dec = Decoder(max_payload)
    dec.receive_data(data)
    try:
        out = drain(dec)
    except NetstringError:
        return None
    return out[0] if len(out) == 1 and not dec.buffered else None


def mangled_netstrings() -> st.SearchStrategy[bytes]:
    """Near-valid wire: a netstring, maybe with a header, terminator or length changed, or
    something after it, or a prefix of it."""
    header = st.one_of(
        st.integers(0, 30).map(lambda n: str(n).encode()),
        st.sampled_from([b"", b"0", b"00", b"01", b"+1", b" 1", b"1 ", b"1_0", b"\xd9\xa1"]),
        st.text("0123456789", max_size=7).map(str.encode),
    )
    return st.one_of(
        st.builds(encode, st.binary(max_size=30)),
        st.builds(
            lambda h, p, t, rest: h + b":" + p + t + rest,
            header,
            st.binary(max_size=30),
            st.sampled_from([b",", b";", b"", b",,"]),
            st.binary(max_size=4),
        ),
        st.builds(lambda p, n: encode(p)[:n], st.binary(max_size=30), st.integers(0, 40)),
        st.builds(lambda a, b: encode(a) + encode(b), st.binary(max_size=9), st.binary(max_size=9)),
        st.binary(max_size=40),
    )


@settings(max_examples=2000)
@given(mangled_netstrings(), st.sampled_from([0, 1, 5, 9, 10, 11, 30, 99, DEFAULT_MAX_PAYLOAD]))
def test_parse_whole_agrees_with_the_decoder(data: bytes, max_payload: int) -> None:
    assert parse_whole(data, max_payload) == decoder_whole(data, max_payload)


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        (b"0:,", b""),
        (b"1:a,", b"a"),
        (b"14:postfix a.test,", b"postfix a.test"),
        (b"01:a,", None),  # leading zero
        (b"1:a;", None),
        (b"1:a", None),  # not yet whole
        (b"1:a,1:b,", None),  # two: the Decoder's
        (b"2:a,", None),
        (b":a,", None),
        (b"x:a,", None),
        (b"", None),
    ],
)
def test_parse_whole(data: bytes, payload: bytes | None) -> None:
    assert parse_whole(data) == payload


def test_parse_whole_size_limit() -> None:
    assert parse_whole(b"3:abc,", max_payload=3) == b"abc"
    assert parse_whole(b"3:abc,", max_payload=2) is None
    assert parse_whole(b"00000000000003:abc,", max_payload=3) is None
