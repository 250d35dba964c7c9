"""policyd.codec.mtasts and policyd.codec.sts_record: RFC 8461 3.1 / 3.2 grammar."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec.mtasts import (
    MAX_AGE_CAP,
    MAX_POLICY_BYTES,
    StsGrammarError,
    StsTxt,
    StsTxtProblem,
    TxtProblemKind,
    _split_fields,
    discover,
    is_mx_pattern,
    parse_policy,
    parse_record,
    parse_txt,
)
from policyd.codec.records import sts_policy_from_json, sts_policy_to_json
from policyd.core.evidence import MAX_MX_PATTERNS, StsMode, StsPolicy

GOOD = b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"


def crlf(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r\n")


def parse(body: bytes) -> tuple[StsMode, tuple[str, ...], int]:
    p = parse_policy(body, "example.com", 1000.0)
    return p.mode, p.mx, p.max_age


def error_field(body: bytes) -> str:
    with pytest.raises(StsGrammarError) as info:
        parse_policy(body, "example.com", 0.0)
    return info.value.field


# -- TXT record --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "policy_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1; id=20160831085700Z", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1 ;\tid=abc ; ", "abc"),
        ("v=STSv1; id=" + "a" * 32, "a" * 32),
        ("v=STSv1; foo=bar; id=x1", "x1"),
        ("v=STSv1; id=first; id=second", "first"),
    ],
)
def test_txt_valid(record: str, policy_id: str) -> None:
    assert parse_record(record).policy_id == policy_id
    assert parse_txt([record]) == parse_record(record)
    assert discover([record]) == parse_record(record)


def test_txt_unknown_fields_kept_as_extensions() -> None:
    assert parse_record("v=STSv1; ext.1=a-b; id=1").extensions == (("ext.1", "a-b"),)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ("v=STSv1", "id"),
        ("v=STSv1;", "id"),
        ("v=STSv1; id=", "id"),
        ("v=STSv1; id=" + "a" * 33, "id"),
        ("v=STSv1; id=abc-def", "id"),
        ("v=STSv1; id=abc def", "id"),
        ("v=STSv1 id=abc", "v"),
        ("v=STSv1; ;id=abc", "field"),
        ("v=STSv1; id=abc;; ", "field"),
        ("v=STSv1; id=abc; foo", "field"),
        ("v=STSv1; id=abc; foo=", "field"),
        ("v=STSv1; id=abc; foo=a=b", "field"),
        ("v=STSv1; id=abc; -foo=b", "field"),
        ("v=STSv1; id=abc; foo=bär", "field"),
        ("v=STSv1; id=abc\n", "id"),
    ],
)
def test_txt_invalid(record: str, field: str) -> None:
    with pytest.raises(StsGrammarError) as info:
        parse_record(record)
    assert info.value.field == field
    with pytest.raises(StsGrammarError):
        parse_txt([record])
    found = discover([record])
    assert isinstance(found, StsTxtProblem) and found.kind is TxtProblemKind.INVALID


def test_txt_selection() -> None:
    spf = "v=spf1 -all"
    good = "v=STSv1; id=1"
    assert parse_txt([spf, good]) == StsTxt("1")
    assert parse_txt([]) is None
    assert parse_txt([spf, "v=STSv10; id=1", "V=STSv1; id=1", " v=STSv1; id=1"]) is None
    assert parse_txt([good, "v=STSv1; id=2"]) is None
    none = discover([spf])
    assert isinstance(none, StsTxtProblem) and none.kind is TxtProblemKind.NONE
    many = discover([good, good])
    assert isinstance(many, StsTxtProblem) and many.kind is TxtProblemKind.MULTIPLE
    # One valid and one invalid v=STSv1 record are still two: no policy (RFC 8461 3.1).
    two = discover([good, "v=STSv1"])
    assert isinstance(two, StsTxtProblem) and two.kind is TxtProblemKind.MULTIPLE


def test_txt_trailing_data_is_part_of_the_record() -> None:
    with pytest.raises(StsGrammarError):
        parse_record("v=STSv1; id=abc; \x00")
    assert parse_record("v=STSv1; id=abc; \t").policy_id == "abc"


def test_sts_txt_validates() -> None:
    with pytest.raises(ValueError, match="invalid"):
        StsTxt("not valid")


# -- policy file -------------------------------------------------------------------------


def test_policy_whole_lf_and_crlf() -> None:
    expected = (StsMode.ENFORCE, ("mail.example.com", "*.example.net"), 604800)
    assert parse(GOOD) == expected
    assert parse(crlf(GOOD)) == expected
    assert parse(GOOD.rstrip(b"\n")) == expected  # the last terminator is optional
    mixed = (
        b"version: STSv1\r\nmode: enforce\nmx: mail.example.com\r\n"
        b"mx: *.example.net\nmax_age: 604800"
    )
    assert parse(mixed) == expected


def test_policy_field_order_and_white_space() -> None:
    body = b"max_age:86400\t \nmx:   mx1.example.com  \nmode:\ttesting\nversion: STSv1 \n"
    assert parse(body) == (StsMode.TESTING, ("mx1.example.com",), 86400)


def test_policy_blank_lines_and_unknown_fields_ignored() -> None:
    body = GOOD + b"\n\nfoo: bar baz\nx_y.z-1: \xc3\xa4\n\r\n"
    assert parse(body)[0] is StsMode.ENFORCE


def test_policy_to_sts_policy() -> None:
    parsed = parse_policy(GOOD, "example.com", 1000.0)
    assert parsed.domain == "example.com"
    assert not parsed.capped and parsed.ignored == ()
    policy = parsed.policy("20240101")
    assert policy == StsPolicy(
        StsMode.ENFORCE, ("mail.example.com", "*.example.net"), 604800, "20240101", 1000.0
    )
    with pytest.raises(StsGrammarError) as info:
        parsed.policy("bad id")
    assert info.value.field == "id"


def test_policy_mode_none_needs_no_mx() -> None:
    body = b"version: STSv1\nmode: none\nmax_age: 86400\n"
    assert parse(body) == (StsMode.NONE, (), 86400)
    assert parse_policy(body, "example.com", 0.0).policy("1").mode is StsMode.NONE


@pytest.mark.parametrize("mode", [b"enforce", b"testing"])
def test_policy_mx_required_unless_none(mode: bytes) -> None:
    assert error_field(b"version: STSv1\nmode: " + mode + b"\nmax_age: 1\n") == "mx"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        (b"version: STSv1\nmx: a.example\nmax_age: 1\n", "mode"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
        (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        (b"version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        (b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode"),
        (b"version: STSv1\nmode: report\nmx: a.example\nmax_age: 1\n", "mode"),
        (b"Version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1.5\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1 2\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: \xd9\xa1\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age:\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx a.example\nmax_age: 1\n", "line"),
        (b"version: STSv1\n mode: enforce\nmx: a.example\nmax_age: 1\n", "line"),
        (b"version: STSv1\nmode : enforce\nmx: a.example\nmax_age: 1\n", "line"),
        (b"version: STSv1\nmode: enforce\rmx: a.example\nmax_age: 1\n", "mode"),
        (b"<html>\n<body>oops</body>\n", "line"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n\xff\n", "body"),
        (b"version: STSv1\n\xef\xbb\xbfmode: none\nmax_age: 1\n", "line"),
    ],
)
def test_policy_invalid(body: bytes, field: str) -> None:
    assert error_field(body) == field


def test_policy_invalid_utf8_anywhere() -> None:
    assert error_field(GOOD.replace(b"mail", b"m\xc3il")) == "body"
    assert error_field(GOOD + b"foo: \xed\xa0\x80\n") == "body"  # a UTF-16 surrogate


def test_policy_too_large() -> None:
    body = GOOD + b"x: " + b"a" * MAX_POLICY_BYTES + b"\n"
    assert error_field(body) == "body"


def test_policy_max_age_bounds_and_cap() -> None:
    base = b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: "
    zero = parse_policy(base + b"0\n", "example.com", 5.0)
    assert zero.max_age == 0 and not zero.capped
    assert parse_policy(base + b"0086400\n", "example.com", 5.0).max_age == 86400
    top = parse_policy(base + str(MAX_AGE_CAP).encode() + b"\n", "example.com", 5.0)
    assert top.max_age == MAX_AGE_CAP and not top.capped
    over = parse_policy(base + b"9999999999\n", "example.com", 5.0)
    assert (over.max_age, over.capped, over.declared_max_age) == (MAX_AGE_CAP, True, 9999999999)
    assert over.policy("1").max_age == MAX_AGE_CAP


def test_policy_duplicate_fields_first_wins() -> None:
    # RFC 8461 3.2: all but the first occurrence of a non-mx field SHALL be ignored.
    body = GOOD + b"mode: none\nmax_age: 1\nmode: testing\n"
    parsed = parse_policy(body, "example.com", 0.0)
    assert (parsed.mode, parsed.max_age) == (StsMode.ENFORCE, 604800)
    assert parsed.ignored == ("mode", "max_age")
    # An invalid repeat is ignored too: only the first value is read.
    assert parse(GOOD + b"version: STSv2\n")[0] is StsMode.ENFORCE


def test_policy_mx_repeated_deduplicated_lowercased() -> None:
    body = b"version: STSv1\nmode: enforce\nmx: MX.Example.com\nmx: mx.example.com\nmax_age: 1\n"
    assert parse(body)[1] == ("mx.example.com",)


@pytest.mark.parametrize(
    "pattern",
    [
        "mail.example.com",
        "*.example.com",
        "localhost",
        "xn--bcher-kva.example",
        "a-b.c0.example",
        "a" * 63 + ".example",
    ],
)
def test_mx_pattern_valid(pattern: str) -> None:
    assert is_mx_pattern(pattern)
    body = b"version: STSv1\nmode: testing\nmx: " + pattern.encode() + b"\nmax_age: 1\n"
    assert parse(body)[1] == (pattern.lower(),)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "*",
        "*.",
        "*.*.example.com",
        "mail.*.example.com",
        "*mail.example.com",
        "mail*.example.com",
        ".example.com",
        "mail..example.com",
        "-mail.example.com",
        "mail-.example.com",
        "mail_x.example.com",
        "bücher.example",
        "mail example.com",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4 + ["a"]),
    ],
)
def test_mx_pattern_invalid(pattern: str) -> None:
    assert not is_mx_pattern(pattern)
    body = b"version: STSv1\nmode: testing\nmx: " + pattern.encode() + b"\nmax_age: 1\n"
    assert error_field(body) == "mx"


@pytest.mark.parametrize("literal", ["1.2.3.4", "212.114.86.56", "*.0.2.1", "10.1"])
def test_mx_ip_literals_dropped(literal: str) -> None:
    """RFC review D5 (a real policy lists its MX's address): an IP literal is grammatical
    but names no host, and OpenSSL would read it in match= as an address check; it is
    dropped and reported, the host names stay."""
    assert is_mx_pattern(literal)
    body = (
        b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: "
        + literal.encode()
        + b"\nmx: *.example.net\nmax_age: 1\n"
    )
    parsed = parse_policy(body, "example.com", 0.0)
    assert parsed.mx == ("mail.example.com", "*.example.net")
    assert parsed.ignored_mx == (literal,)
    only = b"version: STSv1\nmode: enforce\nmx: " + literal.encode() + b"\nmax_age: 1\n"
    with pytest.raises(StsGrammarError, match="at least one mx besides IP addresses"):
        parse_policy(only, "example.com", 0.0)


def _names(count: int) -> list[bytes]:
    return [f"m{i}.example.com".encode() for i in range(count)]


def _mx_body(patterns: list[bytes]) -> bytes:
    lines = [b"version: STSv1", b"mode: enforce", *(b"mx: " + p for p in patterns)]
    return b"\n".join([*lines, b"max_age: 86400", b""])


def test_mx_pattern_cap() -> None:
    at_cap = parse_policy(_mx_body(_names(MAX_MX_PATTERNS)), "example.com", 0.0)
    assert len(at_cap.mx) == MAX_MX_PATTERNS
    assert at_cap.policy("a").mx == at_cap.mx
    with pytest.raises(StsGrammarError, match=f"more than the {MAX_MX_PATTERNS} accepted") as e:
        parse_policy(_mx_body(_names(MAX_MX_PATTERNS + 1)), "example.com", 0.0)
    assert e.value.field == "mx"


def test_mx_patterns_counted_after_deduplication() -> None:
    """4,000 lines of a few patterns (any case) are a valid policy of those patterns."""
    few = [b"a.example", b"B.example", b"b.EXAMPLE", b"*.c.example"]
    parsed = parse_policy(_mx_body(few * 1000), "example.com", 0.0)
    assert parsed.mx == ("a.example", "b.example", "*.c.example")


def test_hostile_64k_policy_refused_or_reduced() -> None:
    """The security review's H2 body: 64 KiB of distinct patterns is refused (the timing
    is bench/hostile_policy.py's to measure, not a unit test's)."""
    letters, alnum = "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789"
    names = [
        (letters[i // 1296] + alnum[i // 36 % 36] + alnum[i % 36]).encode() for i in range(8000)
    ]
    body = _mx_body(names)
    assert len(body) <= MAX_POLICY_BYTES
    assert error_field(body) == "mx"


def _reference_split(body: bytes) -> tuple[dict[str, str], list[str], list[str]]:
    """The line-by-line reading the scanning _split_fields replaced, for comparison."""
    text = body.decode("utf-8")
    first: dict[str, str] = {}
    mx: list[str] = []
    ignored: list[str] = []
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", name, re.ASCII):
            raise StsGrammarError("line", "not 'key: value'")
        if name not in ("version", "mode", "max_age", "mx"):
            continue
        value = value.strip(" \t")
        if name == "mx":
            mx.append(value)
        elif name in first:
            if name not in ignored:
                ignored.append(name)
        else:
            first[name] = value
    return first, mx, ignored


_FIELD_NAMES = st.sampled_from(["version", "mode", "max_age", "mx", "MX", "foo", "x_y", " mx", ""])
_VALUES = st.text(alphabet="ab.*-é \t\r\x0b:", max_size=8)


@settings(max_examples=1000)
@given(
    st.lists(
        st.tuples(_FIELD_NAMES, st.sampled_from([":", ": ", ":\t", "", " :"]), _VALUES),
        max_size=10,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_split_fields_reads_as_line_by_line(lines: list[tuple[str, str, str]], term: str) -> None:
    """The scanning reader agrees with a plain line-by-line reading, except that it
    refuses an mx value with characters no pattern has at once (field mx)."""
    body = term.join(n + sep + v for n, sep, v in lines).encode()
    try:
        expected = _reference_split(body)
    except StsGrammarError as exc:
        with pytest.raises(StsGrammarError) as info:
            _split_fields(body)
        assert info.value.field == exc.field
        return
    try:
        got = _split_fields(body)
    except StsGrammarError as exc:
        assert exc.field == "mx"
        assert not all(is_mx_pattern(v) for v in expected[1])
        return
    assert got == expected


def test_mx_pattern_invalid_even_for_mode_none() -> None:
    assert error_field(b"version: STSv1\nmode: none\nmx: *.*.x\nmax_age: 1\n") == "mx"


def test_policy_byte_by_byte_prefixes_never_escape() -> None:
    # The codec takes whole bodies; every prefix must parse or fail with StsGrammarError.
    body = crlf(GOOD)
    for end in range(len(body) + 1):
        with contextlib.suppress(StsGrammarError):
            parse_policy(body[:end], "example.com", 0.0)


@given(st.binary(max_size=2048))
def test_fuzz_policy_only_grammar_error(body: bytes) -> None:
    with contextlib.suppress(StsGrammarError):
        parse_policy(body, "example.com", 0.0)


_POLICY_LINES = st.lists(
    st.sampled_from(
        [
            b"version: STSv1",
            b"version:STSv1",
            b"mode: enforce",
            b"mode: testing",
            b"mode: none",
            b"mx: mail.example.com",
            b"mx: *.example.com",
            b"mx: *.*",
            b"max_age: 86400",
            b"max_age: 99999999999",
            b"foo: bar",
            b"",
            b"\xff",
            b" ",
            b":",
        ]
    ),
    max_size=12,
)


@given(_POLICY_LINES, st.sampled_from([b"\n", b"\r\n"]))
def test_fuzz_policy_structured(lines: list[bytes], term: bytes) -> None:
    try:
        parsed = parse_policy(term.join(lines), "example.com", 0.0)
    except StsGrammarError:
        return
    policy = parsed.policy("abc")
    assert policy.mode is StsMode.NONE or policy.mx
    assert 0 <= policy.max_age <= MAX_AGE_CAP


@given(st.lists(st.text(max_size=80), max_size=4))
def test_fuzz_txt_only_grammar_error(strings: list[str]) -> None:
    with contextlib.suppress(StsGrammarError):
        parse_txt(strings)
    assert isinstance(discover(strings), StsTxt | StsTxtProblem)


@given(st.text(alphabet="v=STSv1;id abc\t=-._", max_size=40))
def test_fuzz_txt_structured(tail: str) -> None:
    with contextlib.suppress(StsGrammarError):
        parse_txt(["v=STSv1" + tail])


# -- store record ------------------------------------------------------------------------


def test_record_round_trip() -> None:
    policy = StsPolicy(StsMode.TESTING, ("mx.example.com", "*.example.net"), 86400, "id1", 12.5)
    assert sts_policy_from_json(sts_policy_to_json(policy)) == policy
    none = StsPolicy(StsMode.NONE, (), 0, "z", 0.0)
    assert sts_policy_from_json(sts_policy_to_json(none)) == none


def _doc(**changes: object) -> str:
    doc: dict[str, object] = {
        "v": 1,
        "id": "id1",
        "mode": "enforce",
        "mx": ["mx.example.com"],
        "max_age": 86400,
        "fetched_at": 10.0,
    }
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        _doc(v=2),
        _doc(id="bad id"),
        _doc(id=None),
        _doc(mode="report"),
        _doc(mode=1),
        _doc(mx="mx.example.com"),
        _doc(mx=["*.*.example.com"]),
        _doc(mx=[]),
        _doc(mx=["mx.example.com", "192.0.2.1"]),
        _doc(mx=[f"m{i}.example.com" for i in range(MAX_MX_PATTERNS + 1)]),
        _doc(max_age=-1),
        _doc(max_age=MAX_AGE_CAP + 1),
        _doc(max_age=True),
        _doc(max_age=1.5),
        _doc(fetched_at="now"),
        _doc(fetched_at=-1),
        '{"v":1,"id":"a","mode":"enforce","mx":["a.b"],"max_age":1,"fetched_at":NaN}',
        "x" * 200_000,
        _doc(fetched_at=10**400),  # OverflowError before: stopped the daemon's start
        "[" * 100_000,  # RecursionError before
    ],
)
def test_record_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        sts_policy_from_json(text)


@given(st.text(max_size=300))
def test_fuzz_record_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        sts_policy_from_json(text)


def test_policy_leading_byte_order_mark_dropped() -> None:
    """RFC review D12: a BOM (some editors write one) used to invalidate the whole policy,
    leaving the domain unprotected; it is dropped and reported."""
    parsed = parse_policy(b"\xef\xbb\xbf" + GOOD, "example.com", 0.0)
    assert parsed.mx == ("mail.example.com", "*.example.net")
    assert parsed.repaired == ("byte-order mark",)
    assert parse_policy(GOOD, "example.com", 0.0).repaired == ()


@pytest.mark.parametrize(
    ("pattern", "kept"),
    [
        ("mail.example.com.", "mail.example.com"),
        ("*.example.net.", "*.example.net"),
        ("MAIL.Example.COM.", "mail.example.com"),
    ],
)
def test_mx_trailing_dot_removed(pattern: str, kept: str) -> None:
    """RFC review D12: the absolute form of a name is the same name; one trailing dot
    used to invalidate the whole policy. It is removed and reported, and match= gets
    the name without it."""
    assert not is_mx_pattern(pattern)  # the grammar itself stays strict
    body = b"version: STSv1\nmode: enforce\nmx: " + pattern.encode() + b"\nmax_age: 1\n"
    parsed = parse_policy(body, "example.com", 0.0)
    assert parsed.mx == (kept,)
    assert parsed.repaired == (f"trailing dot in mx {pattern.lower()!r}",)


def test_mx_trailing_dot_joins_its_twin() -> None:
    body = (
        b"version: STSv1\nmode: enforce\nmx: a.example.\nmx: a.example\nmx: b.example.\n"
        b"max_age: 1\n"
    )
    parsed = parse_policy(body, "example.com", 0.0)
    assert parsed.mx == ("a.example", "b.example")
    assert parsed.repaired == ("trailing dot in mx 'a.example.' and others",)


@pytest.mark.parametrize("pattern", ["example.com..", ".", "*.", "a..b."])
def test_mx_more_than_one_dot_still_invalid(pattern: str) -> None:
    body = b"version: STSv1\nmode: enforce\nmx: " + pattern.encode() + b"\nmax_age: 1\n"
    assert error_field(body) == "mx"
