"""The settings of policyd, policyctl and policyd-milter: frozen values and their defaults.

One dataclass per table of policyd.toml (``etc/policyd.toml`` documents every key), each
validated on construction. This module imports nothing heavy (no dnspython, httpx,
cryptography, redis, asyncio; from policyd only the netstring limit), so that
:mod:`policyd.config` and the client programs can read the file without loading the
daemon. The adapters and sources take these values (``DnsSettings``, ``StsSettings``,
``ProbeSettings`` and their timeouts) as arguments.

Timeouts have one style in every table: flat ``*_timeout`` keys (``[dns] timeout`` and
``lifetime`` as dnspython names them), gathered by a ``timeouts`` property into the value
the adapter takes.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, fields
from typing import Annotated, Final

from policyd.codec.netstring import DEFAULT_MAX_PAYLOAD
from policyd.core.types import SMTP_PORT
from policyd.listeners import DEFAULT_PORT, MAX_TCP_PORT, Listener, ListenerKind, OctalMode

# The one configuration file of the three programs (each takes --config).
DEFAULT_CONFIG_PATH: Final = "/etc/policyd/policyd.toml"
# [server] max_destinations: destinations whose answers are held in memory (policyd.held);
# beyond it the least recently used is forgotten and comes back from the slow path (fresh
# evidence) or, in an outage, from the store.
DEFAULT_MAX_DESTINATIONS: Final = 1_000_000
# [server] prefetch: a cached answer in use (hit since it was cached) is refreshed in the
# background when this last fraction of its life begins (unbound's prefetch uses the last
# 10%); 0 turns it off.
DEFAULT_PREFETCH: Final = 0.1
# [server] cpu_slice: the slice the daemon asks of Linux's scheduler (policyd.adapters.
# cpu_slice), in seconds, within the kernel's clamp of 0.1-100 ms. The shortest: in
# bench/prefetch.py (perf sched, 10 s) it cut the loop's waits for a CPU over 0.5 ms from
# 195 to 39; 0.2 ms, in one run, to 176.
MIN_CPU_SLICE: Final = 0.0001
MAX_CPU_SLICE: Final = 0.1
DEFAULT_CPU_SLICE: Final = MIN_CPU_SLICE


def _positive_seconds(timeouts: object, what: str) -> None:
    """Every field of a timeouts value is a finite, positive number of seconds."""
    for f in fields(timeouts):  # type: ignore[arg-type]
        value = getattr(timeouts, f.name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} timeout {f.name} must be a positive number of seconds")


# -- [server], [control] and the small tables ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # Listeners: "unix:/path" or "inet:HOST:PORT" in the file.
    # Loopback TCP reaches Postfix's chrooted smtp(8), its unchrooted programs and postmap
    # alike, with no file permissions to get wrong (the port is RFC 7672's number).
    socketmap: tuple[Listener, ...] = (Listener(ListenerKind.INET, "", "127.0.0.1", DEFAULT_PORT),)
    control: Listener = Listener(ListenerKind.UNIX, path="/run/policyd/control.sock")
    socket_mode: Annotated[int, OctalMode] = 0o660  # unix socketmap sockets: postfix needs rw
    socket_group: str = ""  # "": the postfix group when it exists (see unixsock)
    max_request: int = DEFAULT_MAX_PAYLOAD  # bytes; Postfix sends at most 10000
    request_timeout: float = 10.0  # seconds to finish a started request
    idle_timeout: float = 300.0  # Postfix closes idle ones after 10 s; we allow longer
    max_connections: int = 4096
    lookup_budget: float = 8.0  # seconds before a lookup answers TEMP
    # Destinations whose answers and verdicts are kept in memory; the least recently used
    # beyond it are forgotten (their next lookup gathers fresh evidence).
    max_destinations: int = DEFAULT_MAX_DESTINATIONS
    # A cached answer in use is refreshed when this last fraction of its life begins.
    prefetch: float = DEFAULT_PREFETCH
    # Seconds: the scheduler slice the daemon asks of Linux (6.12 or later) for its threads,
    # so that a lookup's wake-up may preempt a longer-running process; 0: the kernel's own.
    cpu_slice: float = DEFAULT_CPU_SLICE

    def __post_init__(self) -> None:
        if self.max_connections < 1:  # at 0 no connection could ever be admitted
            raise ValueError("max_connections must be at least 1")
        if not 0 <= self.prefetch < 1:  # NaN fails too
            raise ValueError("prefetch must be at least 0 and less than 1")
        if self.cpu_slice != 0 and not MIN_CPU_SLICE <= self.cpu_slice <= MAX_CPU_SLICE:
            raise ValueError(
                f"cpu_slice must be 0 or from {MIN_CPU_SLICE} to {MAX_CPU_SLICE} seconds"
            )


@dataclass(frozen=True, slots=True)
class ControlSettings:
    group: str = ""  # members may change overrides and flush; "" = root only
    read_group: str = ""  # members may run read-only commands (explain, report, status)
    mode: Annotated[int, OctalMode] = 0o660  # of the control socket


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: str = "/etc/ssl/certs/ca-certificates.crt"


# [store] redis_max_connections: connections per Redis pool (the store's, the fleet link's;
# review L8). A call that finds them all busy waits at most the store's command timeout.
DEFAULT_REDIS_CONNECTIONS: Final = 32


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///var/lib/policyd/policyd.db"
    redis_max_connections: int = DEFAULT_REDIS_CONNECTIONS  # Redis only

    def __post_init__(self) -> None:
        if self.redis_max_connections < 1:
            raise ValueError("redis_max_connections must be at least 1")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    # With a Redis store: one probe per MX address and one fetch per MTA-STS policy across
    # every host on that Redis, and overrides and flushes applied by all of them at once.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"

    def __post_init__(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    # Prometheus scrapes GET /metrics here: "inet:HOST:PORT" in the file; None ("") is off.
    listen: Listener | None = None


# -- [dns] -------------------------------------------------------------------------------

# Seconds per query attempt: a local validating resolver answers from cache in
# milliseconds; a cold DNSSEC chase rarely needs more than one second.
DEFAULT_PER_TRY: Final = 2.0
# Seconds for the whole lookup, retries and fallback to TCP included. Kept well below
# Postfix's smtp_tls_policy_maps patience so a slow zone costs a TEMP, not the daemon.
DEFAULT_LIFETIME: Final = 5.0
# The standard DNS port (RFC 1035 4.2).
DEFAULT_DNS_PORT: Final = 53
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
        _positive_seconds(self, "dns")


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Where to send queries, how long to wait, and how long to keep answers."""

    nameservers: tuple[str, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    port: int = DEFAULT_DNS_PORT
    timeout: float = DEFAULT_PER_TRY  # per query attempt (dnspython's name)
    lifetime: float = DEFAULT_LIFETIME  # per lookup
    min_ttl: int = DEFAULT_MIN_TTL
    max_ttl: int = DEFAULT_MAX_TTL
    negative_ttl_max: int = DEFAULT_NEGATIVE_TTL_MAX
    cache_entries: int = DEFAULT_CACHE_ENTRIES

    def __post_init__(self) -> None:
        for address in self.nameservers:
            ipaddress.ip_address(address)  # ValueError names the bad address
        if not 0 < self.port <= MAX_TCP_PORT:
            raise ValueError(f"port {self.port} out of range")
        _ = self.timeouts  # constructing them validates them
        if not 0 <= self.min_ttl <= self.max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        if self.negative_ttl_max < 0:
            raise ValueError("negative_ttl_max must not be negative")
        if self.cache_entries < 1:
            raise ValueError("cache_entries must be at least 1")

    @property
    def timeouts(self) -> DnsTimeouts:
        return DnsTimeouts(per_try=self.timeout, lifetime=self.lifetime)


# -- [sts] -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpsTimeouts:
    """Seconds per phase; ``total`` bounds the whole fetch however slowly bytes trickle.

    RFC 8461 3.3 leaves the values to the sender; these are short because a cold lookup
    waits on the fetch (bounded further by the source's cold budget).
    """

    connect: float = 5.0
    read: float = 5.0
    total: float = 10.0

    def __post_init__(self) -> None:
        _positive_seconds(self, "https")


@dataclass(frozen=True, slots=True)
class StsSettings:
    """The ``[sts]`` settings; all in seconds except the fetch counts."""

    # How long a lookup without a cached policy waits for discovery and fetch before it
    # answers "pending": far below Postfix's socketmap timeout (100 s) and smtp's.
    cold_budget: float = 3.0
    # Refetch a cached policy this old even when its id is unchanged (RFC 8461 3.3 and 10.2
    # recommend proactive refresh); short-lived policies are refetched at half their max_age.
    refresh_interval: float = 86400.0
    # After a failed TXT lookup or fetch, no new attempt for that domain sooner than this
    # (RFC 8461 3.3 and 10.3: rate-limit fetch attempts).
    retry_after_failure: float = 300.0
    # How often a lookup re-reads the TXT record of a domain in use, to see a changed id
    # (RFC 8461 3.1), or to find a policy for a domain that had none.
    recheck_interval: float = 3600.0
    # Refetch a stale cached policy over HTTPS although its TXT record is gone (review
    # D15): continuity across an accidental deletion. Off: RFC 8461 expects the record to
    # stay (and mode none to be published first, 8.3), so the policy lapses at max_age.
    refresh_without_txt: bool = False
    max_concurrent_fetches: int = 16
    # Discoveries and refreshes waiting for a slot; beyond it the oldest background
    # discovery is dropped for urgent work, or the new one is refused (and counted).
    max_queued_fetches: int = 1000
    connect_timeout: float = 5.0  # the HTTPS fetch of a policy (HttpsTimeouts)
    read_timeout: float = 5.0
    fetch_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("cold_budget", "refresh_interval", "retry_after_failure", "recheck_interval"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"sts {name} must not be negative")
        for name in ("max_concurrent_fetches", "max_queued_fetches"):
            if getattr(self, name) < 1:
                raise ValueError(f"sts {name} must be at least 1")
        _ = self.timeouts  # constructing them validates them

    @property
    def timeouts(self) -> HttpsTimeouts:
        return HttpsTimeouts(
            connect=self.connect_timeout, read=self.read_timeout, total=self.fetch_timeout
        )


# -- [probe] -----------------------------------------------------------------------------

# Damping defaults, = policyd.core.probe.DEFAULT_CONFIRM_* (core.probe pulls in
# cryptography, which this module must not; a unit test keeps the two equal).
DEFAULT_CONFIRM_PROBES: Final = 3
DEFAULT_CONFIRM_SECONDS: Final = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class ProbeTimeouts:
    """Seconds per phase of one probe; ``total`` bounds the whole probe of one address."""

    connect: float = 10.0  # TCP connect; Postfix smtp_connect_timeout is 30s
    banner: float = 30.0  # RFC 5321 4.5.3.2.1 allows a 5 min greeting; we are only a probe
    command: float = 15.0  # EHLO, STARTTLS, QUIT replies; RFC 5321 4.5.3.2 (5 min) is for mail
    tls: float = 15.0  # the handshake; Postfix smtp_starttls_timeout is 300s
    total: float = 60.0  # everything for one address, including the may/encrypt retry

    def __post_init__(self) -> None:
        _positive_seconds(self, "probe")


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """``[probe]`` in policyd.toml. Times in seconds."""

    enabled: bool = True
    concurrency: int = 8  # destinations probed at once
    queue_size: int = 1000  # waiting destinations; more are dropped (and counted)
    max_mx_hosts: int = 3  # most preferred MX hosts probed per destination
    reprobe_interval: float = 86400.0  # a destination's evidence is refreshed daily
    host_min_interval: float = 60.0  # one MX host is probed at most this often
    backoff_initial: float = 900.0  # first retry when no MX address was reachable ...
    backoff_max: float = 86400.0  # ... doubling up to this
    confirm_probes: int = DEFAULT_CONFIRM_PROBES  # damping: a weaker level needs K probes
    confirm_seconds: float = DEFAULT_CONFIRM_SECONDS  # ... spread over at least T
    retention: float = 30 * 86400.0  # a stored result is forgotten this long after its probe
    port: int = SMTP_PORT  # for destinations without a port of their own (tests use another)
    helo_name: str = ""  # EHLO name; empty: this host's FQDN (set it to Postfix myhostname)
    connect_timeout: float = 10.0  # see ProbeTimeouts
    banner_timeout: float = 30.0
    command_timeout: float = 15.0
    tls_timeout: float = 15.0
    total_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("concurrency", "queue_size", "max_mx_hosts"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe {name} must be at least 1")
        for name in ("reprobe_interval", "host_min_interval", "retention"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"probe {name} must be a non-negative number of seconds")
        if not (0 < self.backoff_initial <= self.backoff_max and math.isfinite(self.backoff_max)):
            raise ValueError("probe backoff needs 0 < backoff_initial <= backoff_max")
        if not 1 <= self.port <= MAX_TCP_PORT:
            raise ValueError("probe port must be 1-65535")
        if any(c.isspace() for c in self.helo_name):
            raise ValueError("probe helo_name must not contain white space")
        if self.confirm_probes < 1 or not self.confirm_seconds >= 0:
            raise ValueError("damping needs confirm_probes >= 1 and confirm_seconds >= 0")
        _ = self.timeouts  # constructing them validates them

    @property
    def timeouts(self) -> ProbeTimeouts:
        return ProbeTimeouts(
            connect=self.connect_timeout,
            banner=self.banner_timeout,
            command=self.command_timeout,
            tls=self.tls_timeout,
            total=self.total_timeout,
        )


# [outbound] (review L2): the non-global networks probes and MTA-STS fetches may reach
# (policyd.core.reach), e.g. internal MX hosts; empty: global addresses only.
@dataclass(frozen=True, slots=True)
class OutboundSettings:
    allow_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _ = [ipaddress.ip_network(text) for text in self.allow_networks]  # ValueError names it


# -- [milter] ----------------------------------------------------------------------------

# One exchange with the daemon, connect to last reply (seconds). Postfix waits
# milter_command_timeout (30 s) for a milter; an SMTP client should notice nothing.
DEFAULT_MILTER_TIMEOUT: Final = 0.5
MAX_MILTER_TIMEOUT: Final = 10.0  # seconds: a larger bound would let a dead daemon slow SMTP
# Recipient domains warmed and checked per message, and at most (= the control protocol's
# policyd.codec.control.MAX_WARM_DOMAINS, which a unit test keeps equal).
DEFAULT_MAX_DOMAINS: Final = 50
MAX_MILTER_DOMAINS: Final = 100
MILTER_SOCKET_KINDS: Final = ("inet", "inet6", "unix", "local")  # libmilter's smfi_setconn


class MilterAction(enum.Enum):
    NONE = "none"
    LOG = "log"
    HEADER = "header"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class MilterSettings:
    """``[milter]`` in policyd.toml; read only by policyd-milter."""

    # Where Postfix connects, in libmilter's syntax: inet:PORT@HOST or unix:/path.
    socket: str = "inet:8893@127.0.0.1"
    # The daemon's control socket, "unix:/path" or "/path"; "": [server] control.
    control: str = ""
    action: MilterAction = MilterAction.LOG
    timeout: float = DEFAULT_MILTER_TIMEOUT
    max_domains: int = DEFAULT_MAX_DOMAINS

    def __post_init__(self) -> None:
        kind = self.socket.partition(":")[0]
        if kind not in MILTER_SOCKET_KINDS or ":" not in self.socket:
            raise ValueError(f"socket {self.socket!r}: expected inet:PORT@HOST or unix:/path")
        if self.control and not self.control_path:
            raise ValueError(f"control {self.control!r}: expected unix:/path")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= MAX_MILTER_TIMEOUT):
            raise ValueError(
                f"timeout must be more than 0 and at most {MAX_MILTER_TIMEOUT:g} seconds"
            )
        if not 1 <= self.max_domains <= MAX_MILTER_DOMAINS:
            raise ValueError(f"max_domains must be 1 to {MAX_MILTER_DOMAINS}")

    @property
    def control_path(self) -> str:
        """The path of ``control``; "" when it is not a unix socket's (or not given)."""
        path = self.control.removeprefix("unix:")
        return path if path.startswith("/") or (path and ":" not in path) else ""


# Store URLs redis-py opens (redis, rediss, unix, and Sentinel). Here, not in the Redis
# adapter, so that choosing a store never imports redis-py: it is an optional dependency
# (the `redis` extra), and a SQLite installation runs without it.
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel")


def is_redis_url(url: str) -> bool:
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme in REDIS_SCHEMES
