"""The DNS adapter's settings (``[dns]`` in policyd.toml): where to ask, how long to wait,
how long to keep answers. Validated on construction; no I/O."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Final

# Seconds per query attempt: a local validating resolver answers from cache in
# milliseconds; a cold DNSSEC chase rarely needs more than one second.
DEFAULT_PER_TRY: Final = 2.0
# Seconds for the whole lookup, retries and fallback to TCP included. Kept well below
# Postfix's smtp_tls_policy_maps patience so a slow zone costs a TEMP, not the daemon.
DEFAULT_LIFETIME: Final = 5.0
# The standard DNS port (RFC 1035 4.2).
DEFAULT_PORT: Final = 53
# Cached answers live at least this many seconds: very short TTLs would turn every
# mail into a DNS round trip, and the resolver behind us caches by TTL anyway.
DEFAULT_MIN_TTL: Final = 60
# ... and at most one day: a key rollover or a moved MX is picked up within a day even
# if a zone publishes week-long TTLs (RFC 2181 8 allows up to 2^31-1 seconds).
DEFAULT_MAX_TTL: Final = 86400
# Negative answers (NXDOMAIN, NODATA) are cached at most this long (RFC 2308 5: the
# SOA minimum can be long; a newly published MX or TLSA should show up soon).
DEFAULT_NEGATIVE_TTL_MAX: Final = 900
# Cached answers at most; the least recently used are evicted first.
DEFAULT_CACHE_ENTRIES: Final = 100_000


@dataclass(frozen=True, slots=True)
class DnsTimeouts:
    """Two time budgets, as in dnspython: one per query attempt, one per lookup."""

    per_try: float = DEFAULT_PER_TRY
    lifetime: float = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        for name in ("per_try", "lifetime"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} timeout must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class HealthTimes:
    """The breaker's clock, in seconds (see the module doc). A cold DNSSEC chase may take
    longer than ``after``: that only costs one health check, answered in microseconds by
    a live resolver."""

    after: float = 1.0  # a query unanswered this long makes the resolver suspect
    timeout: float = 1.0  # a live local resolver answers localhost in well under this
    retry: float = 1.0  # while open, the resolver is asked again this often

    def __post_init__(self) -> None:
        for name in ("after", "timeout", "retry"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"health {name} must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Where to send queries, how long to wait, and how long to keep answers."""

    nameservers: tuple[str, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    port: int = DEFAULT_PORT
    timeouts: DnsTimeouts = field(default_factory=DnsTimeouts)
    min_ttl: int = DEFAULT_MIN_TTL
    max_ttl: int = DEFAULT_MAX_TTL
    negative_ttl_max: int = DEFAULT_NEGATIVE_TTL_MAX
    cache_entries: int = DEFAULT_CACHE_ENTRIES

    def __post_init__(self) -> None:
        for address in self.nameservers:
            ipaddress.ip_address(address)  # ValueError names the bad address
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if not 0 <= self.min_ttl <= self.max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        if self.negative_ttl_max < 0:
            raise ValueError("negative_ttl_max must not be negative")
        if self.cache_entries < 1:
            raise ValueError("cache_entries must be at least 1")
