"""Policy profiles: the named choices a socketmap map name selects (``socketmap:...:NAME``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VerifiedAs(enum.Enum):
    """What a destination whose every reachable MX verified gets."""

    VERIFY = "verify"
    SECURE = "secure"


class Fallback(enum.Enum):
    """An answer that lets Postfix's own default apply, or an explicit level."""

    NOTFOUND = "NOTFOUND"
    MAY = "may"
    ENCRYPT = "encrypt"


class ColdSts(enum.Enum):
    """What to answer when a cold MTA-STS fetch outlasts the lookup's time bound."""

    CONTINUE = "continue"  # answer from the other evidence, finish the fetch in background
    TEMP = "TEMP"  # defer until the policy is known


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    probe_verified: VerifiedAs = VerifiedAs.VERIFY
    probe_no_tls: Fallback = Fallback.MAY
    unknown: Fallback = Fallback.NOTFOUND
    sts_attributes: bool = False
    sts_cold: ColdSts = ColdSts.CONTINUE
    # MTA-STS for a bracketed next hop on port 25 ([smtp.relay.example], a smart host):
    # its name is the policy domain and must match the policy's mx patterns (RFC 8461 3.4).
    sts_smart_host: bool = True
    # Decide, log and count as usual but answer NOTFOUND: watch before enforcing.
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"bad profile name {self.name!r}")
        if self.probe_no_tls is Fallback.ENCRYPT:
            raise ValueError("probe_no_tls cannot be encrypt: the probe saw no working TLS")


# Both built-in profiles work with Postfix >= 3.4 (servername=). sts_attributes stays off
# even in strict: Postfix before 3.10 defers every delivery whose policy carries them
# ("invalid attribute name", checked with Postfix 3.7.11); turn it on in
# [profiles.strict] with Postfix >= 3.10.5.
DEFAULT_PROFILES: tuple[Profile, ...] = (
    Profile("postfix"),
    Profile(
        "strict",
        probe_verified=VerifiedAs.SECURE,
        probe_no_tls=Fallback.MAY,
        unknown=Fallback.NOTFOUND,
        sts_attributes=False,
        sts_cold=ColdSts.TEMP,
    ),
)
