"""MTA-STS (RFC 8461) rules over an already parsed policy: MX matching and the Postfix mapping.

The gap between the two pattern languages: an MTA-STS ``*.example.com`` matches exactly one
left-most label (RFC 8461 4.1), while Postfix's ``.example.com`` in ``match=`` matches any
depth. Postfix >= 3.10 closes it when given ``mx_host_pattern=`` attributes with
``policy_type=sts`` (``smtp_tls_enforce_sts_mx_patterns``), which profiles can turn on.
"""

from __future__ import annotations

from policyd.core.evidence import StsPolicy
from policyd.core.types import Policy, TlsLevel


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact match, or ``*.`` standing for exactly one left-most label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


def postfix_match(pattern: str) -> str:
    """An MTA-STS mx pattern as a Postfix ``match=`` pattern (wider for wildcards)."""
    pattern = pattern.lower().rstrip(".")
    return pattern[1:] if pattern.startswith("*.") else pattern


def to_policy(domain: str, sts: StsPolicy, with_sts_attributes: bool) -> Policy:
    """``secure match=... servername=hostname`` plus, optionally, Postfix 3.10 STS attributes."""
    match: list[str] = []
    for pattern in sts.mx:
        mapped = postfix_match(pattern)
        if mapped not in match:
            match.append(mapped)
    attrs: list[tuple[str, str]] = [("servername", "hostname")]
    if with_sts_attributes:
        attrs += [("policy_type", "sts"), ("policy_domain", domain)]
        attrs += [("mx_host_pattern", p.lower().rstrip(".")) for p in sts.mx]
    return Policy(TlsLevel.SECURE, tuple(match), tuple(attrs))
