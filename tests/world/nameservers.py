"""The two DNS daemons: bind9 ``named`` (authoritative for every zone) and ``unbound``
(validating resolver, the only one clients ask).  Both must already be inside the world's
network namespace, i.e. started by a thread that entered it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from tests.world.dns import BuiltZone
from tests.world.procs import Background

START_TIMEOUT: Final = 10.0  # seconds for a daemon to load its config and answer
PROBE_TIMEOUT: Final = 0.3  # seconds for one readiness query: well below START_TIMEOUT
DNS_PORT: Final = 53
# Short caches: tests that change the world (restart unbound) should not wait on TTLs.
CACHE_MAX_TTL: Final = 30
CACHE_MAX_NEGATIVE_TTL: Final = 5
VAL_BOGUS_TTL: Final = 5


def probe(
    server: str, qname: str, rdtype: str, *, dnssec: bool = False
) -> dns.message.Message | None:
    """One UDP query with a short timeout; None on timeout or refusal."""
    query = dns.message.make_query(qname, rdtype, want_dnssec=dnssec)
    try:
        return dns.query.udp(query, server, port=DNS_PORT, timeout=PROBE_TIMEOUT)
    except (dns.exception.Timeout, OSError):
        return None


def named_conf(directory: Path, address: str, zones: Sequence[BuiltZone]) -> str:
    zone_blocks = "".join(
        f'zone "{b.zone.name}" {{ type primary; file "{b.file}"; }};\n' for b in zones
    )
    return f"""\
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {DNS_PORT} {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;  // authoritative only: unbound validates
    allow-query {{ any; }};
    notify no;
}};
controls {{ }};  // no rndc: tests restart the process instead
{zone_blocks}"""


class Named:
    """bind9 serving the built zones on ``address`` port 53."""

    def __init__(self, directory: Path, address: str, zones: Sequence[BuiltZone]) -> None:
        self.dir = directory
        self.address = address
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "named.conf"
        self.conf.write_text(named_conf(directory, address, zones))
        # -g: foreground, log to stderr (our log file); -u root: we are root already, and
        # dropping to "bind" would lose access to the pytest temp directory.
        self.proc = Background(
            "named",
            ["named", "-g", "-4", "-c", str(self.conf), "-u", "root"],
            directory / "named.log",
        )

    def ready(self) -> bool:
        answer = probe(self.address, ".", "SOA")
        return answer is not None and answer.rcode() == dns.rcode.NOERROR

    def start(self) -> None:
        self.proc.start(self.ready, START_TIMEOUT)

    def stop(self) -> None:
        self.proc.stop()


def unbound_conf(
    directory: Path, address: str, upstream: str, anchor_file: Path, tlds: Sequence[str]
) -> str:
    # unbound answers special-use TLDs (RFC 6761: test., invalid., ...) itself with
    # NXDOMAIN unless told not to; the world's TLDs must be resolved for real.
    nodefault = "".join(f'    local-zone: "{tld}" nodefault\n' for tld in tlds)
    # No domain-insecure anywhere: every answer is validated from the root anchor down.
    return f"""\
server:
{nodefault}
    verbosity: 1
    interface: {address}
    port: {DNS_PORT}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{directory}"
    pidfile: "{directory}/unbound.pid"
    logfile: ""
    use-syslog: no
    log-servfail: yes
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor-file: "{anchor_file}"
    trust-anchor-signaling: no
    root-key-sentinel: no
    harden-dnssec-stripped: yes
    ede: yes
    cache-max-ttl: {CACHE_MAX_TTL}
    cache-max-negative-ttl: {CACHE_MAX_NEGATIVE_TTL}
    val-bogus-ttl: {VAL_BOGUS_TTL}
    num-threads: 1

remote-control:
    control-enable: no

# The whole tree lives on named: the root is a stub pointing at it, no priming needed.
stub-zone:
    name: "."
    stub-addr: {upstream}@{DNS_PORT}
    stub-prime: no
"""


class Unbound:
    """unbound on ``address`` port 53, validating with the world's root key."""

    def __init__(
        self,
        directory: Path,
        address: str,
        upstream: str,
        trust_anchor: str,
        tlds: Sequence[str],
        probe_name: str,
    ) -> None:
        self.dir = directory
        self.address = address
        self.probe_name = probe_name
        directory.mkdir(parents=True, exist_ok=True)
        anchor_file = directory / "root.ds"
        anchor_file.write_text(trust_anchor + "\n")
        self.conf = directory / "unbound.conf"
        self.conf.write_text(unbound_conf(directory, address, upstream, anchor_file, tlds))
        self.proc = Background(
            "unbound", ["unbound", "-d", "-c", str(self.conf)], directory / "unbound.log"
        )

    def ready(self) -> bool:
        """Ready = a validated answer: the AD flag on a signed zone's SOA."""
        answer = probe(self.address, self.probe_name, "SOA", dnssec=True)
        return (
            answer is not None
            and answer.rcode() == dns.rcode.NOERROR
            and bool(answer.flags & dns.flags.AD)
        )

    @property
    def running(self) -> bool:
        return self.proc.running

    def start(self) -> None:
        self.proc.start(self.ready, START_TIMEOUT)

    def stop(self) -> None:
        self.proc.stop()
