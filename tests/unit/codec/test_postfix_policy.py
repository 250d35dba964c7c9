"""policyd.codec.postfix_policy: render and parse ``level name=value ...``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec.postfix_policy import (
    KNOWN_ATTRS,
    MAX_POLICY,
    PolicySyntaxError,
    parse,
    render,
)
from policyd.core.types import Policy, TlsLevel

FP1 = "3D:95:34:51:24:66:33:B9:D2:40:99:C0:C1:17:0B:D1"
FP2 = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99"


@pytest.mark.parametrize(
    ("pol", "text"),
    [
        (Policy(TlsLevel.NONE), "none"),
        (Policy(TlsLevel.MAY), "may"),
        (Policy(TlsLevel.ENCRYPT), "encrypt"),
        (Policy(TlsLevel.DANE), "dane"),
        (Policy(TlsLevel.DANE_ONLY), "dane-only"),
        (Policy(TlsLevel.VERIFY), "verify"),
        (Policy(TlsLevel.SECURE), "secure"),
        (
            Policy(TlsLevel.SECURE, ("mx1.example.com", ".example.net")),
            "secure match=mx1.example.com:.example.net",
        ),
        (Policy(TlsLevel.VERIFY, ("hostname", "nexthop")), "verify match=hostname:nexthop"),
        (Policy(TlsLevel.FINGERPRINT, (FP1,)), f"fingerprint match={FP1}"),
        (Policy(TlsLevel.FINGERPRINT, (FP1, FP2)), f"fingerprint match={FP1}|{FP2}"),
        (
            Policy(
                TlsLevel.SECURE,
                (".example.com",),
                (("servername", "hostname"), ("policy_type", "sts")),
            ),
            "secure match=.example.com servername=hostname policy_type=sts",
        ),
        (
            Policy(TlsLevel.ENCRYPT, (), (("protocols", "!SSLv2:!SSLv3"), ("ciphers", "high"))),
            "encrypt protocols=!SSLv2:!SSLv3 ciphers=high",
        ),
    ],
)
def test_render_and_parse(pol: Policy, text: str) -> None:
    assert render(pol) == text
    assert parse(text) == pol


@pytest.mark.parametrize(
    ("text", "pol"),
    [
        ("SECURE MATCH=a.example", Policy(TlsLevel.SECURE, ("a.example",))),
        ("Dane-Only", Policy(TlsLevel.DANE_ONLY)),
        ("  verify   match=a:b  ", Policy(TlsLevel.VERIFY, ("a", "b"))),
        ("secure match=a::b:", Policy(TlsLevel.SECURE, ("a", "b"))),
        ("fingerprint match=|A:B||", Policy(TlsLevel.FINGERPRINT, ("A:B",))),
        (
            "encrypt Servername=Mx.Example",
            Policy(TlsLevel.ENCRYPT, (), (("servername", "Mx.Example"),)),
        ),
        ("may tafile=/etc/ta=x.pem", Policy(TlsLevel.MAY, (), (("tafile", "/etc/ta=x.pem"),))),
        (
            "secure policy_type=sts policy_domain=example.com mx_host_pattern=*.example.com",
            Policy(
                TlsLevel.SECURE,
                (),
                (
                    ("policy_type", "sts"),
                    ("policy_domain", "example.com"),
                    ("mx_host_pattern", "*.example.com"),
                ),
            ),
        ),
    ],
)
def test_parse_lenient_forms(text: str, pol: Policy) -> None:
    assert parse(text) == pol


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("tls", id="unknown-level"),
        pytest.param("dane_only", id="underscore-level"),
        pytest.param("NOTFOUND", id="notfound-is-not-a-level"),
        pytest.param("secure match", id="bare-word"),
        pytest.param("secure match=", id="empty-match"),
        pytest.param("secure match=:::", id="only-separators"),
        pytest.param("fingerprint match=||", id="fingerprint-only-separators"),
        pytest.param("fingerprint match=zz", id="fingerprint-not-hex"),
        pytest.param("fingerprint match=AB:CD|example.net", id="fingerprint-hostname"),
        pytest.param("fingerprint match=AB::CD", id="fingerprint-empty-byte"),
        pytest.param("secure match=a match=b", id="match-twice"),
        pytest.param("may match=a", id="match-on-may"),
        pytest.param("dane match=a", id="match-on-dane"),
        pytest.param("encrypt match=a", id="match-on-encrypt"),
        pytest.param("secure servername", id="attr-without-value"),
        pytest.param("secure servername=", id="attr-empty-value"),
        pytest.param("secure =hostname", id="attr-without-name"),
        pytest.param("secure srvname=hostname", id="typo-attribute"),
        pytest.param("secure level=secure", id="unknown-level-attr"),
        pytest.param("secure " + "x" * MAX_POLICY, id="too-long"),
        # Injection: Postfix splits a policy on ", \t\r\n": each of these would be a
        # second attribute.
        "verify match=.victim.example,tafile=/etc/passwd",
        "secure match=mx.example.net servername=hostname,tafile=/etc/passwd",
        "encrypt ciphers=high,tafile=/x",
        # NUL truncates the policy inside Postfix; other controls corrupt it.
        "encrypt ciphers=high\x00 protocols=>=TLSv1.2",
        "secure match=mx.example.net\x00x",
        "secure match=mx.example.net\x1b",
        "encrypt protocols=\x7f",
        # Python's split() takes \x1c-\x1f and \x85 as blanks, Postfix does not.
        "secure match=a\x1cb",
        "secure match=caf\u00e9.example",
    ],
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(PolicySyntaxError):
        parse(text)


def test_every_known_attribute_parses() -> None:
    for name in sorted(KNOWN_ATTRS):
        assert parse(f"encrypt {name}=v").attrs == ((name, "v"),)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": TlsLevel.MAY, "match": ("a",)},
        {"level": TlsLevel.SECURE, "match": ("",)},
        {"level": TlsLevel.SECURE, "match": ("a b",)},
        {"level": TlsLevel.SECURE, "attrs": (("", "v"),)},
        {"level": TlsLevel.SECURE, "attrs": (("bad-name", "v"),)},
        {"level": TlsLevel.SECURE, "attrs": (("servername", ""),)},
        {"level": TlsLevel.SECURE, "attrs": (("servername", "a b"),)},
        {"level": TlsLevel.SECURE, "attrs": (("match", "a"),)},
        # What Postfix would split into a second attribute or truncate (see test_parse_errors).
        {"level": TlsLevel.SECURE, "match": ("a,tafile=x",)},
        {"level": TlsLevel.SECURE, "match": ("a\x00",)},
        {"level": TlsLevel.SECURE, "match": ("a\tb",)},
        {"level": TlsLevel.ENCRYPT, "attrs": (("ciphers", "high,tafile=/x"),)},
        {"level": TlsLevel.ENCRYPT, "attrs": (("ciphers", "high\x07"),)},
        {"level": TlsLevel.ENCRYPT, "attrs": (("c\u00efphers", "high"),)},
        # A match pattern containing the separator renders into a different policy.
        {"level": TlsLevel.SECURE, "match": ("a:b",)},
    ],
)
def test_policy_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_syntax_error(text: str) -> None:
    try:
        pol = parse(text)
    except PolicySyntaxError:
        return
    assert parse(render(pol)) == pol


_token = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":|,{}"),
    min_size=1,
    max_size=12,
)
_host = st.from_regex(r"\A\.?[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,3}\Z")
_fingerprint = st.lists(st.from_regex(r"\A[0-9A-F]{2}\Z"), min_size=16, max_size=32).map(":".join)
_attrs = st.lists(st.tuples(st.sampled_from(sorted(KNOWN_ATTRS)), _token), max_size=4).map(tuple)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    level = draw(st.sampled_from(list(TlsLevel)))
    match: tuple[str, ...] = ()
    if level is TlsLevel.FINGERPRINT:
        match = tuple(draw(st.lists(_fingerprint, min_size=1, max_size=3)))
    elif level.takes_match:
        match = tuple(draw(st.lists(_host, max_size=3)))
    return Policy(level, match, draw(_attrs))


@given(policies())
def test_generated_policies_round_trip(pol: Policy) -> None:
    text = render(pol)
    assert "\n" not in text
    assert parse(text) == pol
    assert render(parse(text)) == text


def test_policy_string_values_with_spaces_in_braces() -> None:
    """Postfix >= 3.10 reads { name = value } (smtp_tls_policy.c: extpar); only
    policy_string values may hold spaces, and never braces or control characters."""
    pol = Policy(TlsLevel.SECURE, ("mx.example.com",), (("policy_string", "mode: enforce"),))
    assert render(pol) == "secure match=mx.example.com { policy_string = mode: enforce }"
    plain = Policy(TlsLevel.SECURE, (), (("policy_string", "x"),))
    assert parse(render(plain)) == plain  # no space: the plain form, as overrides store it
    for bad in ["", " lead", "trail ", "a}b", "{a", "a,b", "a\tb", "a\nb", "a\x00b", "é"]:
        with pytest.raises(ValueError):
            Policy(TlsLevel.SECURE, (), (("policy_string", bad),))
    with pytest.raises(ValueError):
        Policy(TlsLevel.SECURE, (), (("servername", "two words"),))
