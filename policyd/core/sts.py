"""MTA-STS (RFC 8461) rules over an already parsed policy: MX matching and the Postfix mapping.

The gap between the two pattern languages: an MTA-STS ``*.example.com`` matches exactly one
left-most label (RFC 8461 4.1), while Postfix's ``.example.com`` in ``match=`` matches any
depth. Postfix >= 3.10.5 closes it when given ``mx_host_pattern=`` attributes with
``policy_type=sts`` (``smtp_tls_enforce_sts_mx_patterns``), which profiles can turn on
(``sts_attributes``). With them go ``policy_domain`` and one ``policy_string`` per policy
line, which Postfix >= 3.10 passes to TLSRPT as the RFC 8460 4.4 policy-string. Postfix
before 3.10 defers mail on any of these attributes ("invalid attribute name").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from policyd.core.evidence import StsPolicy
from policyd.core.names import fold, sts_pattern_matches
from policyd.core.types import Policy, TlsLevel

MX_SHOWN_CHARS: Final = 200  # characters of mx patterns quoted in a reason or log line


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact match, or ``*.`` standing for exactly one left-most label; any
    case, with or without a trailing dot."""
    return sts_pattern_matches(fold(pattern), fold(host))


def any_mx_matches(sts: StsPolicy, hosts: Iterable[str]) -> bool:
    """Whether one of ``hosts`` (MX host names in normal form) matches one of the
    policy's mx patterns (RFC 8461 4.1)."""
    patterns = [fold(p) for p in sts.mx]
    return any(sts_pattern_matches(p, h) for h in hosts for p in patterns)


def postfix_match(pattern: str) -> str:
    """An MTA-STS mx pattern as a Postfix ``match=`` pattern (wider for wildcards)."""
    pattern = fold(pattern)
    return pattern[1:] if pattern.startswith("*.") else pattern


def describe_mx(patterns: tuple[str, ...]) -> str:
    """The patterns for a reason or log line: as many as fit :data:`MX_SHOWN_CHARS`
    (at least one), then how many more there are."""
    shown: list[str] = []
    used = 0
    for pattern in patterns:
        if shown and used + len(pattern) > MX_SHOWN_CHARS:
            break
        shown.append(pattern)
        used += len(pattern) + 1
    more = len(patterns) - len(shown)
    return ",".join(shown) + (f" (+{more} more)" if more else "")


def to_policy(domain: str, sts: StsPolicy, with_sts_attributes: bool) -> Policy:
    """``secure match=... servername=hostname`` plus, optionally, Postfix 3.10 STS attributes."""
    # dict.fromkeys: order-preserving de-duplication in linear time.
    match = tuple(dict.fromkeys(postfix_match(p) for p in sts.mx))
    attrs: list[tuple[str, str]] = [("servername", "hostname")]
    if with_sts_attributes:
        attrs += [("policy_type", "sts"), ("policy_domain", domain)]
        attrs += [("mx_host_pattern", fold(p)) for p in sts.mx]
        attrs += [("policy_string", line) for line in policy_lines(sts)]
    return Policy(TlsLevel.SECURE, match, tuple(attrs))


def policy_lines(sts: StsPolicy) -> tuple[str, ...]:
    """The policy as RFC 8460 4.4 reports it, one string per line (RFC 8461 3.2), from the
    fields as policyd keeps them (mx patterns in lower case, max_age capped)."""
    return (
        "version: STSv1",
        f"mode: {sts.mode.value}",
        *(f"mx: {p}" for p in sts.mx),
        f"max_age: {sts.max_age}",
    )
