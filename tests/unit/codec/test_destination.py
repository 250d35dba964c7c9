"""policyd.codec.destination: Postfix lookup keys into Destination values."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyd.codec.destination import MAX_NAME, DestinationError, parse_key
from policyd.core.evidence import Destination, DestinationForm


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("example.com", Destination("example.com")),
        ("EXAMPLE.COM.", Destination("example.com")),
        ("Example.Com", Destination("example.com")),
        ("  example.com  ", Destination("example.com")),
        ("[mx.example.com]", Destination("mx.example.com", form=DestinationForm.HOST)),
        ("[MX.Example.com.]", Destination("mx.example.com", form=DestinationForm.HOST)),
        ("[mx.example.com]:587", Destination("mx.example.com", 587, DestinationForm.HOST)),
        ("[mx.example.com]:25", Destination("mx.example.com", 25, DestinationForm.HOST)),
        ("example.com:587", Destination("example.com", 587)),
        ("example.com:65535", Destination("example.com", 65535)),
        ("example.com:1", Destination("example.com", 1)),
        (".example.com", Destination("example.com", form=DestinationForm.PARENT)),
        (".EXAMPLE.com.", Destination("example.com", form=DestinationForm.PARENT)),
        ("bücher.example", Destination("xn--bcher-kva.example")),
        ("BÜCHER.example", Destination("xn--bcher-kva.example")),
        ("[bücher.example]:587", Destination("xn--bcher-kva.example", 587, DestinationForm.HOST)),
        (".bücher.example", Destination("xn--bcher-kva.example", form=DestinationForm.PARENT)),
        ("xn--bcher-kva.example", Destination("xn--bcher-kva.example")),
        ("_srv.example.com", Destination("_srv.example.com")),
        ("localhost", Destination("localhost")),
        ("[192.0.2.1]", Destination("192.0.2.1", form=DestinationForm.ADDRESS)),
        ("[192.0.2.1]:587", Destination("192.0.2.1", 587, DestinationForm.ADDRESS)),
        ("[ipv6:2001:db8::1]", Destination("2001:db8::1", form=DestinationForm.ADDRESS)),
        ("[ipv6:2001:DB8:0:0::1]", Destination("2001:db8::1", form=DestinationForm.ADDRESS)),
        ("[ipv6:2001:db8::1]:587", Destination("2001:db8::1", 587, DestinationForm.ADDRESS)),
        ("[2001:db8::1]", Destination("2001:db8::1", form=DestinationForm.ADDRESS)),
        ("a" * 63 + ".com", Destination("a" * 63 + ".com")),
    ],
)
def test_parse_key(key: str, expected: Destination) -> None:
    assert parse_key(key) == expected


@pytest.mark.parametrize(
    ("key", "canonical", "is_address"),
    [
        ("EXAMPLE.COM.", "example.com", False),
        ("example.com:587", "example.com:587", False),
        ("[mx.example.com]", "[mx.example.com]", False),
        ("[mx.example.com]:587", "[mx.example.com]:587", False),
        (".example.com", ".example.com", False),
        ("[192.0.2.1]", "[192.0.2.1]", True),
        ("[ipv6:2001:db8::1]", "[2001:db8::1]", True),
    ],
)
def test_canonical_key(key: str, canonical: str, is_address: bool) -> None:
    dest = parse_key(key)
    assert dest.key == canonical
    assert dest.is_address is is_address
    assert parse_key(dest.key) == dest  # the canonical key parses back to itself


def test_rfc5321_ipv6_tag_is_case_insensitive() -> None:
    """RFC 5321 4.1.3 spells the tag ``IPv6:``; Postfix matches it case-insensitively."""
    assert parse_key("[IPv6:2001:db8::1]") == Destination(
        "2001:db8::1", form=DestinationForm.ADDRESS
    )


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(".", id="dot"),
        pytest.param("..example.com", id="double-dot-parent"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("exa mple.com", id="space"),
        pytest.param("exa\tmple.com", id="tab"),
        pytest.param("exa\u3000mple.com", id="ideographic-space"),
        pytest.param("exa\x1cmple.com", id="file-separator"),
        pytest.param(" \t ", id="only-white-space"),
        pytest.param("-example.com", id="leading-hyphen"),
        pytest.param("example-.com", id="trailing-hyphen"),
        pytest.param("exa!mple.com", id="punctuation"),
        pytest.param("a" * 64 + ".com", id="long-label"),
        pytest.param(".".join(["a" * 63] * 4) + ".com", id="long-name"),
        pytest.param("[mx.example.com", id="unterminated-bracket"),
        pytest.param("[mx.example.com]587", id="garbage-after-bracket"),
        pytest.param("[mx.example.com]:", id="empty-bracket-port"),
        pytest.param("[]", id="empty-brackets"),
        pytest.param("example.com:", id="empty-port"),
        pytest.param("example.com:0", id="port-zero"),
        pytest.param("example.com:0587", id="port-leading-zero"),
        pytest.param("example.com:65536", id="port-too-big"),
        pytest.param("example.com:123456", id="port-too-long"),
        pytest.param("example.com:-1", id="port-negative"),
        pytest.param("example.com:smtp", id="port-name"),
        pytest.param("example.com:²", id="port-superscript-digit"),
        pytest.param("example.com:٥٨٧", id="port-arabic-digits"),
        pytest.param("[mx.example.com]:²", id="bracket-port-superscript"),
        pytest.param("a:b:c", id="two-colons"),
        pytest.param("[ipv6:zz::1]", id="bad-ipv6"),
        pytest.param("exa\u2028mple.com", id="unicode-line-separator"),
        pytest.param("xn--.com", id="empty-punycode"),
        pytest.param("a\u200db.example", id="zero-width-joiner"),
        pytest.param("\x00", id="nul"),
    ],
)
def test_parse_key_errors(key: str) -> None:
    with pytest.raises(DestinationError):
        parse_key(key)


@settings(max_examples=1000)
@given(st.text(max_size=80))
@example("example.com:\u00b2")  # int() rejects what str.isdigit() accepts
def test_arbitrary_text_only_raises_key_error(key: str) -> None:
    try:
        dest = parse_key(key)
    except DestinationError:
        return
    assert dest.name and dest.name.isascii()
    assert len(dest.name) <= MAX_NAME or dest.is_address
    assert 0 < dest.port < 65536


_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
_names = st.lists(_label, min_size=1, max_size=5).map(".".join)


@given(
    _names,
    st.integers(1, 65535),
    st.booleans(),
    st.booleans(),
)
def test_generated_keys_round_trip(name: str, port: int, bracketed: bool, upper: bool) -> None:
    # A bracketed dotted quad is an address (found by this test: [0.0.0.0]:1).
    form = DestinationForm.HOST if bracketed else DestinationForm.DOMAIN
    if bracketed and parse_key(f"[{name}]").form is DestinationForm.ADDRESS:
        form = DestinationForm.ADDRESS
    dest = Destination(name, port, form)
    key = dest.key.upper() if upper else dest.key
    assert parse_key(key) == dest
    assert parse_key(key + ("." if not bracketed and port == 25 else "")) == dest


def test_destination_form_replaces_the_flags() -> None:
    host = parse_key("[mx.example.com]:587")
    assert host.form is DestinationForm.HOST and host.bracketed and not host.is_address
    address = parse_key("[192.0.2.1]")
    assert address.form is DestinationForm.ADDRESS and address.bracketed and address.is_address
    parent = parse_key(".example.com")
    assert parent.form is DestinationForm.PARENT and parent.parent_form and not parent.bracketed
    assert parse_key("example.com").form is DestinationForm.DOMAIN


def test_destination_validates_on_construction() -> None:
    assert Destination("Example.COM.").name == "example.com"
    assert Destination("2001:DB8::1", form=DestinationForm.ADDRESS).name == "2001:db8::1"
    with pytest.raises(ValueError):
        Destination("mx.example.com", form=DestinationForm.ADDRESS)
    with pytest.raises(ValueError):
        Destination("example.com", 587, DestinationForm.PARENT)
    with pytest.raises(ValueError):
        Destination("example.com", 0)
    with pytest.raises(ValueError):
        Destination("bad name.example")


@pytest.mark.parametrize("name", ["192.0.2.1", "0.0.0.0"])
def test_an_address_is_never_a_host(name: str) -> None:
    with pytest.raises(ValueError, match="ADDRESS form"):
        Destination(name, 25, DestinationForm.HOST)
