"""The values the decision core speaks: TLS levels, Postfix policies and verdicts.

Wire strings (``dane-only``, ``match=...``) are rendered only in :mod:`policyd.codec`;
here everything is an enum or a frozen dataclass that validates on construction.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final

from policyd.core.frozen import quick_init

SMTP_PORT: Final = 25  # RFC 5321 4.5.4.1: the port of a destination that names none

# Characters of a verdict's reason: it is sent with TEMP, logged and kept in the event log,
# and parts of it come from remote parties (policy patterns, MX host names).
MAX_REASON: Final = 512


class TlsLevel(enum.Enum):
    """Postfix TLS security levels usable in smtp_tls_policy_maps (postconf(5))."""

    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    DANE = "dane"
    DANE_ONLY = "dane-only"
    FINGERPRINT = "fingerprint"
    VERIFY = "verify"
    SECURE = "secure"

    @property
    def strength(self) -> int:
        """How much the level protects against an active attacker, for "never weaker"."""
        return _STRENGTH[self]

    @property
    def takes_match(self) -> bool:
        """Levels for which Postfix accepts a ``match=`` attribute."""
        return self in (TlsLevel.FINGERPRINT, TlsLevel.VERIFY, TlsLevel.SECURE)


# Attributes whose value may hold spaces: Postfix (>= 3.10) reads them in the
# "{ name = value }" form (smtp_tls_policy.c: extpar), such as the MTA-STS policy lines of
# policy_string for TLSRPT. Their values are printable ASCII without braces or commas (a
# value without spaces is sent as name=value, where Postfix splits at a comma).
SPACED_ATTRS: Final = frozenset({"policy_string"})
_SPACED_VALUE: Final = re.compile(r"[!-+\--z|~](?:[ -+\--z|~]*[!-+\--z|~])?")

# Opportunistic DANE authenticates the hosts with usable TLSA and encrypts
# opportunistically elsewhere, so it sits between encrypt and the mandatory levels.
_STRENGTH: dict[TlsLevel, int] = {
    TlsLevel.NONE: 0,
    TlsLevel.MAY: 1,
    TlsLevel.ENCRYPT: 2,
    TlsLevel.DANE: 3,
    TlsLevel.VERIFY: 4,
    TlsLevel.SECURE: 4,
    TlsLevel.FINGERPRINT: 4,
    TlsLevel.DANE_ONLY: 5,
}


@dataclass(frozen=True, slots=True)
class Policy:
    """A Postfix TLS policy: a level plus its attributes, in the order Postfix reads them.

    ``match`` holds patterns (``secure``/``verify``: host names or ``.parent``/``nexthop``/
    ``hostname``/``dot-nexthop``; ``fingerprint``: colon-separated digests).
    ``attrs`` holds any further ``name=value`` attribute (servername, protocols, ciphers,
    policy_type, policy_domain, mx_host_pattern, ...), kept as given.
    """

    level: TlsLevel
    match: tuple[str, ...] = ()
    attrs: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.match and not self.level.takes_match:
            raise ValueError(f"level {self.level.value} takes no match= attribute")
        # match= joins patterns with ":" (with "|" for fingerprint, whose digests hold ":").
        sep = "|" if self.level is TlsLevel.FINGERPRINT else ":"
        for pattern in self.match:
            if not _is_word(pattern) or sep in pattern:
                raise ValueError(f"bad match pattern {pattern!r}")
        for name, value in self.attrs:
            if not name.isascii() or not name.replace("_", "").isalnum():
                raise ValueError(f"bad attribute name {name!r}")
            if name in SPACED_ATTRS:
                bad = _SPACED_VALUE.fullmatch(value) is None
            else:
                bad = not _is_word(value)
            if bad:
                raise ValueError(f"bad value {value!r} for attribute {name}")
            if name == "match":
                raise ValueError("match is a field of its own, not an attribute")


def _is_word(text: str) -> bool:
    """Printable ASCII without ",": Postfix splits a policy on ", \t\r\n"
    (smtp_tls_policy.c), so a comma or any blank would start a new attribute (say
    ``match=a,tafile=/x``), and a NUL or control character would cut or corrupt it."""
    return (
        bool(text) and text.isascii() and text.isprintable() and " " not in text and "," not in text
    )


class Outcome(enum.Enum):
    """What the socketmap answers: a policy, NOTFOUND (Postfix's default applies) or TEMP."""

    POLICY = "policy"
    NOTFOUND = "notfound"
    TEMP = "temp"


class Rule(enum.Enum):
    """Which step of the decision order chose the verdict."""

    OVERRIDE = "override"
    DANE = "dane"
    MTA_STS = "mta-sts"
    PROBE = "probe"
    DEFAULT = "default"
    NO_MAIL = "no-mail"
    DNS_FAILURE = "dns-failure"


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The core's answer for one destination and profile, with a one-line reason."""

    outcome: Outcome
    rule: Rule
    reason: str
    policy: Policy | None = None

    def __post_init__(self) -> None:
        if (self.outcome is Outcome.POLICY) != (self.policy is not None):
            raise ValueError("a policy verdict needs a policy, and only it")
        if not self.reason.isprintable():
            # A reason quotes text from outside (an override comment, a TLS alert, a
            # Content-Type); it is one line in logs and replies, escaped, never refused:
            # refusing would turn the lookup into TEMP.
            object.__setattr__(self, "reason", one_line(self.reason))
        if len(self.reason) > MAX_REASON:
            object.__setattr__(self, "reason", self.reason[: MAX_REASON - 3] + "...")

    @property
    def strength(self) -> int:
        """Ordering for "never weaker": TEMP (no delivery now) is strongest, NOTFOUND weakest."""
        if self.outcome is Outcome.TEMP:
            return 100
        if self.policy is None:
            return -1
        return self.policy.level.strength


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newlines, ESC, NUL...) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def notfound(rule: Rule, reason: str) -> Verdict:
    return Verdict(Outcome.NOTFOUND, rule, reason)


def temp(rule: Rule, reason: str) -> Verdict:
    return Verdict(Outcome.TEMP, rule, reason)


def policy(rule: Rule, reason: str, pol: Policy) -> Verdict:
    return Verdict(Outcome.POLICY, rule, reason, pol)
