"""Postfix TLS policy syntax (postconf(5) smtp_tls_policy_maps): ``level name=value ...``.

``match`` joins its patterns with ``:``, except for ``fingerprint`` where digests contain
colons and Postfix separates them with ``|``.
"""

from __future__ import annotations

import re
from typing import Final

from policyd.core.types import Policy, TlsLevel

MAX_POLICY: Final = 4096  # far above anything sane; keeps overrides bounded

# Attributes Postfix knows for TLS policy entries (postconf(5), TLS_README), including
# the MTA-STS ones of Postfix >= 3.10. Anything else is rejected so a typo in an override
# is caught here rather than logged as a warning by every Postfix delivery agent.
KNOWN_ATTRS: Final = frozenset(
    {
        "ciphers",
        "exclude",
        "protocols",
        "servername",
        "tafile",
        "connection_reuse",
        "enable_rpk",
        "policy_type",
        "policy_domain",
        "policy_ttl",
        "policy_string",
        "policy_failure",
        "mx_host_pattern",
    }
)


# A fingerprint digest: hex, bytes optionally separated by ":" (Postfix ignores anything
# else with "malformed fingerprint value", so such an override could never match).
_DIGEST: Final = re.compile(r"[0-9A-Fa-f]+(?::[0-9A-Fa-f]+)*")


class PolicySyntaxError(ValueError):
    pass


def _match_sep(level: TlsLevel) -> str:
    return "|" if level is TlsLevel.FINGERPRINT else ":"


def _attribute(name: str, value: str) -> str:
    # A value with spaces goes in braces, "{ name = value }", as Postfix >= 3.10 reads
    # policy_string (smtp_tls_policy.c: mystrtokq, extpar); only SPACED_ATTRS values
    # may hold spaces.
    return f"{{ {name} = {value} }}" if " " in value else f"{name}={value}"


def render(pol: Policy) -> str:
    parts = [pol.level.value]
    if pol.match:
        parts.append("match=" + _match_sep(pol.level).join(pol.match))
    parts += [_attribute(name, value) for name, value in pol.attrs]
    return " ".join(parts)


def parse(text: str) -> Policy:
    if len(text) > MAX_POLICY:
        raise PolicySyntaxError("policy too long")
    words = text.split()
    if not words:
        raise PolicySyntaxError("empty policy")
    try:
        level = TlsLevel(words[0].lower())
    except ValueError as exc:
        raise PolicySyntaxError(f"unknown TLS level {words[0][:32]!r}") from exc
    match: tuple[str, ...] = ()
    attrs: list[tuple[str, str]] = []
    for word in words[1:]:
        name, eq, value = word.partition("=")
        name = name.lower()
        if not eq or not value:
            raise PolicySyntaxError(f"attribute {word[:32]!r} is not name=value")
        if name == "match":
            if match:
                raise PolicySyntaxError("match= given twice")
            match = tuple(p for p in value.split(_match_sep(level)) if p)
            if not match:
                raise PolicySyntaxError("empty match=")
            if level is TlsLevel.FINGERPRINT:
                for digest in match:
                    if _DIGEST.fullmatch(digest) is None:
                        raise PolicySyntaxError(f"fingerprint {digest[:32]!r} is not hex digits")
        elif name in KNOWN_ATTRS:
            attrs.append((name, value))
        else:
            raise PolicySyntaxError(f"unknown attribute {name[:32]!r}")
    try:
        return Policy(level, match, tuple(attrs))
    except ValueError as exc:
        raise PolicySyntaxError(str(exc)) from exc
