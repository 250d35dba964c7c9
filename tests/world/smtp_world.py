"""SMTP servers for the world: the STARTTLS-probe destinations, and mail receivers for the
DANE (and MTA-STS) hosts.

Probe destinations sit in zones without TLSA (unsigned, or signed without TLSA) and without
MTA-STS, so only probe evidence decides. Each MX host has its own address 127.0.3.x and one
server on port 25:

- ``mx.probe-valid.test`` is a real, throwaway Postfix (``master`` with its own
  config_directory and queue_directory under ``world.dir/postfix-mx``) presenting a valid
  chain; its ``smtpd_proxy_filter`` hands every message to a recorder so tests see receipt;
- the others run in one helper process, ``tests/world/smtp_servers.py`` (aiosmtpd and two
  small protocols), configured from ``world.dir/smtp/servers.json``; ``switch()`` changes a
  server's behaviour at run time (SIGHUP).

Every server that accepts mail records it: ``received(world, host)`` lists the files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from tests.world import postfix
from tests.world.addresses import HOSTS as BASE_HOSTS
from tests.world.ca import CertFiles
from tests.world.dns import Zone
from tests.world.procs import Background
from tests.world.world import Pki, World

SMTP_PORT: Final = 25
PROXY_PORT: Final = 10025  # the Postfix instance's smtpd_proxy_filter (the recorder)
START_TIMEOUT: Final = 20.0  # seconds for the servers to listen
SWITCH_TIMEOUT: Final = 10.0  # seconds for the helper to take a new configuration
CONNECT_TIMEOUT: Final = 0.5
POLL: Final = 0.05
HELPER: Final = Path(__file__).with_name("smtp_servers.py")

HOSTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "mx.probe-valid.test": "127.0.3.1",
        "mx.probe-expired.test": "127.0.3.2",
        "mx.probe-selfsigned.test": "127.0.3.3",
        "mx.probe-wrongname.test": "127.0.3.4",
        "mx.a.b.probe-deepwild.test": "127.0.3.5",
        "mx.probe-wildcard.test": "127.0.3.6",
        "mx.probe-nochain.test": "127.0.3.7",
        "mx.probe-nostarttls.test": "127.0.3.8",
        "mx.probe-intolerant.test": "127.0.3.9",
        "mx.probe-tarpit.test": "127.0.3.10",
        "mx1.probe-mixed.test": "127.0.3.11",
        "mx2.probe-mixed.test": "127.0.3.12",
        "mx.probe-damping.test": "127.0.3.13",
        "mx.probe-sni.test": "127.0.3.14",
        "mx.probe-legacy.test": "127.0.3.15",
    }
)


# What a probe that verified every MX answers (profile postfix): verify, with the SNI the
# probe sent.
VERIFIED: Final = "verify servername=hostname"


@dataclass(frozen=True)
class Case:
    domain: str
    hosts: tuple[str, ...]  # MX hosts, by preference
    expected: str  # postmap answer (profile postfix) once the probe settled
    behaviour: str  # what the helper serves (the Postfix host: "postfix")
    verdicts: tuple[str, ...]  # policyd's per-host verdict
    signed: bool = True


CASES: Final[Mapping[str, Case]] = MappingProxyType(
    {
        "probe-valid": Case(
            "probe-valid.test", ("mx.probe-valid.test",), VERIFIED, "postfix", ("valid",)
        ),
        "probe-expired": Case(
            "probe-expired.test", ("mx.probe-expired.test",), "encrypt", "expired", ("expired",)
        ),
        "probe-selfsigned": Case(
            "probe-selfsigned.test",
            ("mx.probe-selfsigned.test",),
            "encrypt",
            "self-signed",
            ("self-signed",),
            signed=False,
        ),
        "probe-wrongname": Case(
            "probe-wrongname.test",
            ("mx.probe-wrongname.test",),
            "encrypt",
            "wrong-name",
            ("name-mismatch",),
        ),
        "probe-deepwild": Case(
            "probe-deepwild.test",
            ("mx.a.b.probe-deepwild.test",),
            "encrypt",
            "deep-wildcard",
            ("name-mismatch",),
            signed=False,
        ),
        "probe-wildcard": Case(
            "probe-wildcard.test",
            ("mx.probe-wildcard.test",),
            VERIFIED,
            "wildcard",
            ("valid",),
        ),
        "probe-nochain": Case(
            "probe-nochain.test",
            ("mx.probe-nochain.test",),
            "encrypt",
            "no-intermediate",
            ("unknown-issuer",),
            signed=False,
        ),
        "probe-nostarttls": Case(
            "probe-nostarttls.test",
            ("mx.probe-nostarttls.test",),
            "may",
            "plain",
            ("no-starttls",),
        ),
        "probe-intolerant": Case(
            "probe-intolerant.test",
            ("mx.probe-intolerant.test",),
            "may",
            "intolerant",
            ("tls-intolerant",),
            signed=False,
        ),
        "probe-tarpit": Case(
            "probe-tarpit.test",
            ("mx.probe-tarpit.test",),
            "NOTFOUND",
            "tarpit",
            ("unreachable",),
        ),
        "probe-mixed": Case(
            "probe-mixed.test",
            ("mx1.probe-mixed.test", "mx2.probe-mixed.test"),
            "encrypt",
            "valid/expired",
            ("valid", "expired"),
        ),
        "probe-damping": Case(
            "probe-damping.test",
            ("mx.probe-damping.test",),
            VERIFIED,
            "valid",
            ("valid",),
        ),
        # Valid only with SNI: without it the default certificate (another name) comes,
        # as on a multi-tenant host. The probe sends SNI, so the answer asks Postfix to.
        "probe-sni": Case(
            "probe-sni.test", ("mx.probe-sni.test",), VERIFIED, "sni-only", ("valid",)
        ),
        # TLS 1.0 only, key exchange signed with SHA-1, a valid chain: Postfix completes
        # the handshake at may/encrypt but never at verify ("legacy sigalg disallowed").
        "probe-legacy": Case(
            "probe-legacy.test", ("mx.probe-legacy.test",), "encrypt", "legacy", ("legacy-tls",)
        ),
    }
)

SCENARIOS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {name: (case.domain, case.expected) for name, case in CASES.items()}
)

# Hosts of the base (DANE) world that get a mail-accepting server with their own leaf.
DANE_RECEIVERS: Final = (
    "mx.dane-ee.test",
    "mx.dane-ta.test",
    "mx.dane-mismatch.test",
    "mx1.dane-partial.test",
    "mx2.dane-partial.test",
)

# Per-host behaviour of the helper (hosts of multi-MX cases, the rest from CASES).
_HOST_BEHAVIOUR: Final = {"mx1.probe-mixed.test": "valid", "mx2.probe-mixed.test": "expired"}


def behaviour_of(host: str) -> str:
    if host in _HOST_BEHAVIOUR:
        return _HOST_BEHAVIOUR[host]
    return next(c.behaviour for c in CASES.values() if host in c.hosts)


def zones(pki: Pki) -> list[Zone]:
    out: list[Zone] = []
    for case in CASES.values():
        records = [f"@ MX {10 * (i + 1)} {h}." for i, h in enumerate(case.hosts)]
        records += [f"{h}. A {HOSTS[h]}" for h in case.hosts]
        out.append(Zone(case.domain, records, signed=case.signed))
    return out


# -- certificates --------------------------------------------------------------------


def _certs(world: World, host: str) -> dict[str, tuple[str, str]]:
    """The chains a helper server can present, by behaviour name: always ``valid`` (the
    world's leaf for the host) and ``expired``, plus the one its case needs."""
    ca = world.ca
    valid = world.certs[host]
    stem = f"smtp-{host}"

    def pair(files: CertFiles, *, chain: bool = True) -> tuple[str, str]:
        return (str(files.chain if chain else files.cert), str(files.key))

    certs = {
        "valid": pair(valid),
        "expired": pair(ca.issue([host], stem=f"{stem}-expired", validity="expired").files),
    }
    behaviour = behaviour_of(host) if host in HOSTS else "valid"
    if behaviour == "self-signed":
        certs[behaviour] = pair(ca.issue([host], stem=f"{stem}-self", issuer="self").files)
    elif behaviour == "wrong-name":
        other = f"other.{host.split('.', 1)[1]}"
        certs[behaviour] = pair(ca.issue([other], stem=f"{stem}-wrongname").files)
    elif behaviour == "deep-wildcard":
        # *.b.probe-deepwild.test for mx.a.b.probe-deepwild.test: two labels too deep.
        deep = "*." + host.split(".", 2)[2]
        certs[behaviour] = pair(ca.issue([deep], stem=f"{stem}-deepwild").files)
    elif behaviour == "wildcard":
        one = "*." + host.split(".", 1)[1]
        certs[behaviour] = pair(ca.issue([one], stem=f"{stem}-wildcard").files)
    elif behaviour == "no-intermediate":
        certs[behaviour] = pair(valid, chain=False)  # the leaf alone
    elif behaviour == "sni-only":
        # the default certificate, for a name that is not the MX host's
        other = f"default.{host.split('.', 1)[1]}"
        certs[behaviour] = pair(ca.issue([other], stem=f"{stem}-sni-default").files)
    elif behaviour == "legacy":
        certs[behaviour] = pair(valid)  # served over TLS 1.0 only (smtp_servers.py)
    return certs


# -- the running servers ---------------------------------------------------------------


@dataclass
class SmtpServers:
    dir: Path
    config: dict[str, Any]
    helper: Background
    postfix: Background
    generation: int = 0
    hosts: dict[str, str] = field(default_factory=dict)  # host -> address, all served

    @property
    def config_path(self) -> Path:
        return self.dir / "servers.json"

    def write(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config, indent=1))
        tmp.rename(self.config_path)

    def stop(self) -> None:
        try:
            self.postfix.stop()
        finally:
            self.helper.stop()
            _RUNNING.pop(self.dir.parent, None)


_RUNNING: dict[Path, SmtpServers] = {}


def record_dir(world: World) -> Path:
    return world.dir / "smtp" / "received"


def received(world: World, host: str) -> list[Path]:
    """The messages ``host``'s server accepted, oldest first (one file each, ``X-World-*``
    headers first: envelope and ``X-World-TLS: <version>|none``). For the Postfix host the
    recorder sits behind smtpd_proxy_filter (plain hop, ``X-World-TLS: none``): Postfix's
    own ``Received: ... with ESMTPS`` header shows the TLS of the real session."""
    directory = record_dir(world) / host
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.eml"), key=lambda p: int(p.stem))


def sessions(world: World, address: str, port: int = SMTP_PORT) -> int:
    """Connections the helper server at ``address``:``port`` has accepted so far."""
    path = world.dir / "smtp" / "sessions" / f"{address}:{port}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def switch(world: World, domain: str, behaviour: str) -> None:
    """Serve ``behaviour`` (``valid``, ``expired``, ``plain``, ``intolerant``, ``tarpit``, or
    a host's own case) on every helper server of ``domain``'s MX hosts from now on."""
    servers = _RUNNING[world.dir]
    changed = 0
    for srv in servers.config["servers"]:
        host: str = srv["host"]
        if srv["port"] != SMTP_PORT or not (host == domain or host.endswith("." + domain)):
            continue
        if behaviour not in srv["certs"] and behaviour not in ("plain", "intolerant", "tarpit"):
            raise ValueError(f"{host}: no behaviour {behaviour!r}")
        srv["behaviour"] = behaviour
        changed += 1
    if not changed:
        raise ValueError(f"{domain}: no helper-served MX host")
    servers.generation += 1
    servers.config["generation"] = servers.generation
    servers.write()
    assert servers.helper.proc is not None
    servers.helper.proc.send_signal(signal.SIGHUP)
    ack = Path(servers.config["ack_file"])
    deadline = time.monotonic() + SWITCH_TIMEOUT
    while not (ack.exists() and ack.read_text() == str(servers.generation)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"smtp helper did not reload:\n{servers.helper.log_tail()}")
        time.sleep(POLL)


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _sts_hosts() -> dict[str, str]:
    """MX hosts the MTA-STS extension declares (its module may not exist)."""
    name = "tests.world.sts_world"
    if importlib.util.find_spec(name) is None:
        return {}
    hosts: Mapping[str, str] = getattr(importlib.import_module(name), "HOSTS", {})
    return {h: a for h, a in hosts.items() if not h.startswith("mta-sts.")}


# -- Postfix ---------------------------------------------------------------------------


def postfix_instance(world: World, host: str, domain: str) -> Background:
    """A throwaway Postfix receiving for ``domain`` on ``host``'s address, port 25, with
    the host's valid chain; each message goes to the recorder behind smtpd_proxy_filter."""
    cert = world.certs[host]
    address = HOSTS[host]
    instance = postfix.Instance(world.dir / "postfix-mx")
    instance.configure(
        host,
        f"{address}:{SMTP_PORT}",
        [
            "mydestination =",
            f"relay_domains = {domain}",
        ],
        [
            "smtpd_tls_security_level = may",
            f"smtpd_tls_chain_files = {cert.key}, {cert.chain}",
            "smtpd_tls_loglevel = 1",
            "smtpd_tls_received_header = yes",
            f"smtpd_proxy_filter = {address}:{PROXY_PORT}",
        ],
    )
    return instance.master(world, f"postfix {host}")


# -- start -----------------------------------------------------------------------------


def start(world: World) -> Callable[[], None]:
    directory = world.dir / "smtp"
    directory.mkdir(parents=True, exist_ok=True)
    record_dir(world).mkdir(parents=True, exist_ok=True)
    postfix_host = next(h for c in CASES.values() for h in c.hosts if c.behaviour == "postfix")
    postfix_domain = next(c.domain for c in CASES.values() if c.behaviour == "postfix")
    servers: list[dict[str, Any]] = []
    served: dict[str, str] = {}

    def add(host: str, address: str, behaviour: str, port: int = SMTP_PORT) -> None:
        servers.append(
            {
                "host": host,
                "address": address,
                "port": port,
                "behaviour": behaviour,
                "certs": _certs(world, host) if host in world.certs else {},
            }
        )
        served[host] = address

    for host, address in HOSTS.items():
        if host == postfix_host:
            add(host, address, "plain", port=PROXY_PORT)  # the recorder behind Postfix
        else:
            add(host, address, behaviour_of(host))
    for host in DANE_RECEIVERS:
        add(host, BASE_HOSTS[host], "valid")
    for host, address in _sts_hosts().items():
        add(host, address, "valid")
    config: dict[str, Any] = {
        "servers": servers,
        "record_dir": str(record_dir(world)),
        "ready_file": str(directory / "ready"),
        "ack_file": str(directory / "ack"),
        "generation": 0,
    }
    running = SmtpServers(
        directory,
        config,
        Background(
            "smtp helper",
            [sys.executable, str(HELPER), str(directory / "servers.json")],
            directory / "helper.log",
        ),
        postfix_instance(world, postfix_host, postfix_domain),
        hosts=served,
    )
    running.write()
    ready = Path(config["ready_file"])
    ready.unlink(missing_ok=True)
    _RUNNING[world.dir] = running
    try:
        running.helper.start(ready.exists, START_TIMEOUT)
        address = HOSTS[postfix_host]
        running.postfix.start(lambda: _listening(address, SMTP_PORT), START_TIMEOUT)
    except BaseException:
        running.stop()
        raise
    return running.stop
