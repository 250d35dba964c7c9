"""policyd.core.names: the DomainName value type and its validating constructor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.core.names import (
    MAX_NAME,
    DomainNameError,
    domain_name,
    fold,
    host_name,
    is_hostname,
    matches_sts_pattern,
    sts_pattern_matches,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_25._tcp.mx.example", "_25._tcp.mx.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("localhost", "localhost"),
    ],
)
def test_normal_form(text: str, normal: str) -> None:
    name = domain_name(text)
    assert name == normal
    assert type(name) is str  # no per-name overhead: a plain str at run time
    assert domain_name(name) is name


@pytest.mark.parametrize(
    "text",
    ["", ".", "a..b", "-a.example", "a-.example", "a" * 64 + ".com", "a b.example", "xn--.com"],
)
def test_invalid(text: str) -> None:
    with pytest.raises(DomainNameError):
        domain_name(text)


def test_length_limit() -> None:
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(longest) == MAX_NAME
    assert domain_name(longest) == longest
    with pytest.raises(DomainNameError):
        domain_name(longest + "a")


def test_hostname_labels() -> None:
    assert is_hostname(domain_name("mx.example.com"))
    assert not is_hostname(domain_name("_25._tcp.example.com"))


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("MX.Example.com.", "mx.example.com", True),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
    ],
)
def test_matches_sts_pattern(pattern: str, host: str, ok: bool) -> None:
    assert matches_sts_pattern(domain_name(host), pattern) is ok
    assert sts_pattern_matches(fold(pattern), host) is ok


def test_host_name_keeps_ip_literals() -> None:
    assert host_name("2001:db8::1") == "2001:db8::1"
    assert host_name("192.0.2.1") == "192.0.2.1"
    assert host_name("MX.example.") == "mx.example"
    with pytest.raises(DomainNameError):
        host_name("not a name")


def test_fold_returns_the_same_string_when_normal() -> None:
    text = "mx.example.com"
    assert fold(text) is text
    assert fold("MX.example.com.") == text


_label = st.from_regex(r"\A[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


@given(st.lists(_label, min_size=1, max_size=4))
def test_valid_labels_are_accepted_whatever_the_case(labels: list[str]) -> None:
    text = ".".join(labels)
    if len(text) > MAX_NAME:
        return
    assert domain_name(text.upper() + ".") == text


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_name_or_an_error(text: str) -> None:
    try:
        name = domain_name(text)
    except DomainNameError:
        return
    assert name.isascii() and name == name.lower()
    assert 0 < len(name) <= MAX_NAME
    assert all(0 < len(label) <= 63 for label in name.split("."))
    assert not name.endswith(".")
    assert domain_name(str(name)) == name
