"""MTA-STS wire grammar (RFC 8461 3.1, 3.2): the ``_mta-sts`` TXT record and the policy file.

Sans-I/O: callers hand in the TXT strings and the fetched body; nothing here touches the
network. The only exception that escapes is :class:`StsGrammarError`, whose ``field`` names
what was wrong. Keys and fixed values are case-sensitive (RFC 7405 ``%s`` in the ABNF).

Two leniencies, both harmless: blank lines in a policy body are skipped (many servers end
the file with an empty line), and unknown fields are ignored without checking their values
(RFC 8461 3.2: unknown fields SHOULD be ignored).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from policyd.core.evidence import MAX_MX_PATTERNS, StsMode, StsPolicy, is_ip_literal
from policyd.core.names import MAX_NAME  # RFC 1035 2.3.4, without the trailing dot

MAX_POLICY_BYTES: Final = 64 * 1024  # RFC 8461 3.3: senders may reject larger policies
MAX_AGE_CAP: Final = 31557600  # seconds, about a year; RFC 8461 3.2 max_age maximum

TXT_VERSION: Final = "v=STSv1"  # RFC 8461 3.1
POLICY_VERSION: Final = "STSv1"  # RFC 8461 3.2

_WSP: Final = " \t"  # RFC 5234 B.1
_ID = re.compile(r"[A-Za-z0-9]{1,32}", re.ASCII)  # sts-id, RFC 8461 3.1
_TXT_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", re.ASCII)  # sts-ext-name
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+", re.ASCII)  # sts-ext-value
_MAX_AGE = re.compile(r"[0-9]{1,10}", re.ASCII)  # sts-policy-max-age-value = 1*10DIGIT
# RFC 5321 4.1.2 sub-domain: Let-dig [Ldh-str], at most 63 octets (RFC 1035 2.3.4).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_MODES: Final = {m.value: m for m in StsMode}


class StsGrammarError(Exception):
    """A TXT record or policy file that RFC 8461 does not allow; ``field`` names the part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# -- the TXT record (RFC 8461 3.1) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StsTxt:
    """A valid ``v=STSv1`` record: the policy id and any extension fields, in order."""

    policy_id: str
    extensions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not is_policy_id(self.policy_id):
            raise ValueError(f"invalid MTA-STS id {self.policy_id[:40]!r}")


class TxtProblemKind(enum.Enum):
    """Why discovery found no usable record; each means "no policy" (RFC 8461 3.1)."""

    NONE = "none"
    MULTIPLE = "multiple"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class StsTxtProblem:
    kind: TxtProblemKind
    detail: str


def is_policy_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def _is_candidate(record: str) -> bool:
    """Records not beginning with ``v=STSv1`` are discarded (RFC 8461 3.1; erratum 6285
    notes the grammar allows white space before the ``;``)."""
    if not record.startswith(TXT_VERSION):
        return False
    rest = record[len(TXT_VERSION) :]
    return rest == "" or rest[0] == ";" or rest[0] in _WSP


def parse_record(record: str) -> StsTxt:
    """One ``v=STSv1`` record (its character-strings concatenated)."""
    if not _is_candidate(record):
        raise StsGrammarError("v", "record does not begin with v=STSv1")
    head, *fields = record[len(TXT_VERSION) :].split(";")
    if head.strip(_WSP):
        raise StsGrammarError("v", "v=STSv1 not followed by ';'")
    if fields and not fields[-1].strip(_WSP):
        fields.pop()  # the optional trailing delimiter
    policy_id: str | None = None
    extensions: list[tuple[str, str]] = []
    for raw in fields:
        field = raw.strip(_WSP)
        name, sep, value = field.partition("=")
        if not sep or _TXT_EXT_NAME.fullmatch(name) is None:
            raise StsGrammarError("field", f"malformed field {field[:40]!r}")
        if name == "id":
            if not is_policy_id(value):
                raise StsGrammarError("id", f"id must be 1 to 32 letters or digits: {value[:40]!r}")
            if policy_id is None:  # like the policy file, a repeated field: the first wins
                policy_id = value
        elif _TXT_EXT_VALUE.fullmatch(value) is None:
            raise StsGrammarError("field", f"malformed value of {name!r}")
        else:
            extensions.append((name, value))
    if policy_id is None:
        raise StsGrammarError("id", "record has no id")
    return StsTxt(policy_id, tuple(extensions))


def discover(strings: Sequence[str]) -> StsTxt | StsTxtProblem:
    """The TXT RRset at ``_mta-sts.<domain>``, one element per record. Never raises."""
    candidates = [s for s in strings if _is_candidate(s)]
    if not candidates:
        return StsTxtProblem(TxtProblemKind.NONE, "no v=STSv1 TXT record")
    if len(candidates) > 1:
        return StsTxtProblem(
            TxtProblemKind.MULTIPLE, f"{len(candidates)} v=STSv1 TXT records (must be one)"
        )
    try:
        return parse_record(candidates[0])
    except StsGrammarError as exc:
        return StsTxtProblem(TxtProblemKind.INVALID, f"invalid v=STSv1 TXT record: {exc}")


def parse_txt(strings: Sequence[str]) -> StsTxt | None:
    """The single valid record, None for none or several; StsGrammarError for a bad one."""
    candidates = [s for s in strings if _is_candidate(s)]
    if len(candidates) != 1:
        return None
    return parse_record(candidates[0])


# -- the policy file (RFC 8461 3.2) ------------------------------------------------------


def is_mx_pattern(text: str) -> bool:
    """``["*."] Domain`` with Domain in A-labels (RFC 8461 3.2, RFC 5321 4.1.2)."""
    name = text[2:] if text.startswith("*.") else text
    if not name or len(name) > MAX_NAME:
        return False
    return all(_LABEL.fullmatch(label) is not None for label in name.split("."))


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A policy file as parsed, before it is tied to the TXT id it was announced with.

    ``capped`` says ``max_age`` was above :data:`MAX_AGE_CAP` and was lowered to it
    (``declared_max_age`` keeps the value served); ``ignored`` names repeated fields whose
    later occurrences were ignored (RFC 8461 3.2); ``ignored_mx`` holds mx patterns that
    are IP addresses, dropped (see :func:`policyd.core.evidence.is_ip_literal`);
    ``repaired`` says what harmless slips were mended rather than refusing the whole
    policy (a leading byte-order mark, an mx pattern ending in a dot). All are for the
    caller to log.
    """

    domain: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float
    declared_max_age: int
    capped: bool = False
    ignored: tuple[str, ...] = ()
    ignored_mx: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.max_age <= MAX_AGE_CAP:
            raise ValueError(f"max_age {self.max_age} out of range")
        if self.mode is not StsMode.NONE and not self.mx:
            raise ValueError(f"mode {self.mode.value} needs at least one mx pattern")

    def policy(self, policy_id: str) -> StsPolicy:
        """The cacheable policy, keyed by the id of the TXT record that announced it."""
        if not is_policy_id(policy_id):
            raise StsGrammarError("id", f"id must be 1 to 32 letters or digits: {policy_id[:40]!r}")
        return StsPolicy(self.mode, self.mx, self.max_age, policy_id, self.fetched_at)


_REQUIRED: Final = ("version", "mode", "max_age")


# The body is scanned by these patterns rather than line by line in Python: a 64 KiB
# policy holds some 8,000 lines, and the whole parse must stay within a few milliseconds.
# They run over "\n" + body + "\n", so that every line starts after a "\n" (a literal the
# regex engine finds fast) and ends before one.
# A line is empty (LF or CRLF) or "name:" and a value (RFC 8461 3.2 sts-policy-field).
_BAD_LINE: Final = re.compile(r"\n(?![A-Za-z0-9][A-Za-z0-9_.-]{0,31}:|\r?\n|\Z)")
# field-delim = ":" *WSP; WSP after the value is dropped too, and CR before the LF. An mx
# value the pattern cannot take (spaces inside, non-ASCII) leaves its line uncounted,
# which the caller checks.
_MX_FIELD: Final = re.compile(r"\nmx:[ \t]*([!-~]*)[ \t]*\r?(?=\n)")
_OTHER_FIELD: Final = re.compile(r"\n(version|mode|max_age):[ \t]*([^\n]*?)[ \t]*\r?(?=\n)")
_BOM: Final = "\ufeff"


def _split_fields(body: bytes) -> tuple[dict[str, str], list[str], list[str]]:
    """``key: value`` lines separated by LF or CRLF -> first value per known key, all mx
    values, and the names of ignored repeats. Unknown fields SHOULD be ignored (3.2).
    A leading UTF-8 byte-order mark is dropped (see parse_policy)."""
    if len(body) > MAX_POLICY_BYTES:
        raise StsGrammarError("body", f"policy over {MAX_POLICY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StsGrammarError("body", f"not UTF-8 at byte {exc.start}") from None
    text = text.removeprefix(_BOM)
    lines = f"\n{text}\n"
    bad = _BAD_LINE.search(lines)
    if bad is not None:
        number = lines.count("\n", 0, bad.start()) + 1
        raise StsGrammarError("line", f"line {number} is not 'key: value'")
    first: dict[str, str] = {}
    ignored: list[str] = []
    for name, value in _OTHER_FIELD.findall(lines):
        if name in first:
            # RFC 8461 3.2: a repeated non-mx field: all but the first SHALL be ignored.
            if name not in ignored:
                ignored.append(name)
        else:
            first[name] = value
    mx: list[str] = _MX_FIELD.findall(lines)
    if len(mx) != lines.count("\nmx:"):
        raise StsGrammarError("mx", "an mx value that is no pattern (spaces, non-ASCII)")
    return first, mx, ignored


def _without_root_dot(pattern: str) -> str:
    """``mail.example.com.`` -> ``mail.example.com``; two dots or more stay (invalid)."""
    return pattern[:-1] if pattern.endswith(".") and not pattern.endswith("..") else pattern


def parse_policy(body: bytes, domain: str, fetched_at: float) -> ParsedPolicy:
    """The body of ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.

    Lenient where refusing costs the recipient its protection and accepting costs
    nothing (RFC review D12): a leading UTF-8 byte-order mark (some editors write one)
    is dropped, and one trailing dot on an mx pattern (``mail.example.com.``, the
    absolute form of the same name) is removed. Both are named in ``repaired``.
    """
    repaired: list[str] = ["byte-order mark"] if body.startswith(_BOM.encode()) else []
    fields, mx_values, ignored = _split_fields(body)
    for name in _REQUIRED:
        if name not in fields:
            raise StsGrammarError(name, "missing")
    if fields["version"] != POLICY_VERSION:
        raise StsGrammarError("version", f"unsupported version {fields['version'][:40]!r}")
    mode = _MODES.get(fields["mode"])
    if mode is None:
        raise StsGrammarError("mode", f"unknown mode {fields['mode'][:40]!r}")
    raw_age = fields["max_age"]
    if _MAX_AGE.fullmatch(raw_age) is None:
        raise StsGrammarError("max_age", f"not 1 to 10 digits: {raw_age[:40]!r}")
    declared = int(raw_age)
    # One pass, linear: dict.fromkeys keeps the first of each pattern in order (a list
    # searched per pattern made 8,000 patterns cost a second of CPU).
    lowered = "\n".join(mx_values).lower().split("\n") if mx_values else []
    dotted = [p for p in lowered if _without_root_dot(p) != p]
    if dotted:
        repaired.append(
            f"trailing dot in mx {dotted[0][:80]!r}" + (" and others" * (len(dotted) > 1))
        )
        lowered = [_without_root_dot(p) for p in lowered]
    distinct = dict.fromkeys(lowered)
    if len(distinct) > MAX_MX_PATTERNS:
        raise StsGrammarError(
            "mx", f"{len(distinct)} mx patterns, more than the {MAX_MX_PATTERNS} accepted"
        )
    mx: list[str] = []
    ip_literals: list[str] = []
    for pattern in distinct:
        if not is_mx_pattern(pattern):
            raise StsGrammarError("mx", f"invalid mx pattern {pattern[:80]!r}")
        (ip_literals if is_ip_literal(pattern) else mx).append(pattern)
    if mode is not StsMode.NONE and not mx:
        besides = " besides IP addresses" if ip_literals else ""
        raise StsGrammarError("mx", f"mode {mode.value} needs at least one mx{besides}")
    return ParsedPolicy(
        domain=domain,
        mode=mode,
        mx=tuple(mx),
        max_age=min(declared, MAX_AGE_CAP),
        fetched_at=fetched_at,
        declared_max_age=declared,
        capped=declared > MAX_AGE_CAP,
        ignored=tuple(ignored),
        ignored_mx=tuple(ip_literals),
        repaired=tuple(repaired),
    )
