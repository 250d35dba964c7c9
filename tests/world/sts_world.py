"""The MTA-STS extension of the test world (RFC 8461): signed zones with ``_mta-sts`` TXT
records and an HTTPS policy server per ``mta-sts.<domain>`` address.

Every domain ``sts-*.test`` is its own signed zone with an MX host of its own, an
``_mta-sts`` TXT record and an ``mta-sts.<domain>`` A record.  The policy servers run in
one subprocess (``tests/world/https_server.py``), one listener per policy host address
with that host's certificate (or a deliberately wrong one), serving a per-domain
behaviour from a JSON file that the helpers below rewrite at run time:

* :func:`set_behaviour` / :func:`take_down` / :func:`bring_up`: change what a domain's
  policy host serves, or close its listener (connection refused);
* :func:`set_txt_id`: change a domain's TXT ``id`` (re-sign the zone, restart named and
  unbound so that nothing stale is served).

``bulk.test`` is for the benchmark: ``*.bulk.test`` has a wildcard MX, TXT and A, and its
policy host issues a certificate for whatever SNI name it is asked for, so any number of
``<label>.bulk.test`` domains have a valid enforce policy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from tests.world.ca import CertAuthority, new_key
from tests.world.dns import Zone, sign
from tests.world.procs import Background
from tests.world.world import Pki, World

HTTPS_PORT: Final = 443
START_TIMEOUT: Final = 10.0  # seconds for the policy server to bind its listeners
RELOAD_TIMEOUT: Final = 10.0  # seconds for a SIGHUP to take effect
POLL: Final = 0.02
SERVER_SCRIPT: Final = Path(__file__).with_name("https_server.py")
TXT_ID: Final = "20240101a"  # the initial id of every domain's TXT record
MAX_AGE: Final = 86400

# Domain label (``sts-<label>.test``) -> what the domain is about; order fixes addresses.
DOMAINS: Final = (
    "enforce",
    "wild",
    "testing",
    "none",
    "untrusted",
    "wrongname",
    "redirect",
    "404",
    "big",
    "html",
    "slow",
    "unreachable",
    "twotxt",
    "idchange",
    "down",
    "persist",
    "unsigneddane",
    "forged",
)
BULK: Final = "bulk.test"
# Domains whose own zone is not signed (their MX RRset is insecure, so forgeable).
UNSIGNED: Final = frozenset({"unsigneddane", "forged"})
# Domains whose MX host lives in another zone of the world: a DANE host of the base world
# (tests/world/scenarios.py), signed, with TLSA 3 1 1 of its own leaf.
FOREIGN_MX: Final[Mapping[str, str]] = MappingProxyType({"unsigneddane": "mx.dane-ee.test"})
# The signed host with TLSA that tests forge an MTA-STS domain's MX to (security review C1).
FORGED_TO: Final = "mx.dane-ee.test"


def domain_of(label: str) -> str:
    return f"sts-{label}.test"


def mx_of(label: str) -> str:
    """The MX host: ``mx1.`` for the wildcard domain (matched by ``*.``), a host of another
    zone for FOREIGN_MX domains, else ``mx.``."""
    if label in FOREIGN_MX:
        return FOREIGN_MX[label]
    return f"{'mx1' if label == 'wild' else 'mx'}.{domain_of(label)}"


def _hosts() -> dict[str, str]:
    hosts: dict[str, str] = {}
    for i, label in enumerate(DOMAINS):
        if label not in FOREIGN_MX:
            hosts[mx_of(label)] = f"127.0.2.{2 * i + 1}"
        hosts[f"mta-sts.{domain_of(label)}"] = f"127.0.2.{2 * i + 2}"
    hosts["mx2.sts-idchange.test"] = "127.0.2.100"  # the MX the changed policy names
    hosts[f"mx.{BULK}"] = "127.0.2.101"
    hosts[f"mta-sts.{BULK}"] = "127.0.2.102"  # the wildcard A of every bulk policy host
    return hosts


HOSTS: Final[Mapping[str, str]] = MappingProxyType(_hosts())


def policy_body(mode: str, mx: list[str] | tuple[str, ...], max_age: int = MAX_AGE) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def _secure(match: str) -> str:
    return f"secure match={match} servername=hostname"


def _enforce(label: str) -> dict[str, Any]:
    return {"behaviour": "ok", "body": policy_body("enforce", [mx_of(label)])}


@dataclass(frozen=True)
class Case:
    label: str
    expected: str
    why: str
    serve: dict[str, Any] = field(default_factory=dict)  # the https_server behaviour
    txt: tuple[str, ...] = (f"v=STSv1; id={TXT_ID}",)


CASES: Final[tuple[Case, ...]] = (
    Case("enforce", _secure("mx.sts-enforce.test"), "valid enforce policy", _enforce("enforce")),
    Case(
        "wild",
        _secure(".sts-wild.test"),
        "mx *.sts-wild.test maps to Postfix .sts-wild.test (wider: any depth)",
        {"behaviour": "ok", "body": policy_body("enforce", ["*.sts-wild.test"])},
    ),
    Case(
        "testing",
        "NOTFOUND",
        "mode testing is never enforced",
        {"behaviour": "ok", "body": policy_body("testing", [mx_of("testing")])},
    ),
    Case(
        "none",
        "NOTFOUND",
        "mode none: no policy",
        {"behaviour": "ok", "body": policy_body("none", [mx_of("none")])},
    ),
    Case(
        "untrusted",
        "NOTFOUND",
        "HTTPS certificate from another CA (RFC 8461 3.3)",
        _enforce("untrusted"),
    ),
    Case(
        "wrongname",
        "NOTFOUND",
        "HTTPS certificate for another name (RFC 8461 3.3)",
        _enforce("wrongname"),
    ),
    Case(
        "redirect",
        "NOTFOUND",
        "301: redirects are not followed (RFC 8461 3.3)",
        {
            "behaviour": "redirect",
            "location": "https://mta-sts.sts-enforce.test/.well-known/mta-sts.txt",
        },
    ),
    Case(
        "404",
        "NOTFOUND",
        "HTTP 404: only 200 counts (RFC 8461 3.3)",
        {"behaviour": "ok", "status": 404, "body": policy_body("enforce", [mx_of("404")])},
    ),
    Case(
        "big",
        "NOTFOUND",
        "policy body over 64 KiB, no Content-Length (RFC 8461 3.2)",
        {
            "behaviour": "ok",
            "body": policy_body("enforce", [mx_of("big")]),
            "pad": 70_000,
            "no_length": True,
        },
    ),
    Case(
        "html",
        "NOTFOUND",
        "Content-Type text/html (RFC 8461 3.2: text/plain)",
        {
            "behaviour": "ok",
            "content_type": "text/html",
            "body": policy_body("enforce", [mx_of("html")]),
        },
    ),
    Case(
        "slow",
        "NOTFOUND",
        "server never finishes the body: answer within the cold budget",
        {"behaviour": "slow"},
    ),
    Case(
        "unreachable",
        "NOTFOUND",
        "TXT present, nothing listens on the policy host",
        {"behaviour": "down"},
    ),
    Case(
        "twotxt",
        "NOTFOUND",
        "two v=STSv1 TXT records: no policy (RFC 8461 3.1)",
        _enforce("twotxt"),
        (f"v=STSv1; id={TXT_ID}", "v=STSv1; id=20240101b"),
    ),
    Case(
        "idchange",
        _secure("mx.sts-idchange.test"),
        "initial policy; tests change the TXT id and the policy",
        _enforce("idchange"),
    ),
    Case(
        "down",
        _secure("mx.sts-down.test"),
        "tests take HTTPS down after the policy is cached",
        _enforce("down"),
    ),
    Case(
        "persist",
        _secure("mx.sts-persist.test"),
        "tests restart the daemon with HTTPS down",
        _enforce("persist"),
    ),
    Case(
        "unsigneddane",
        _secure("mx.dane-ee.test"),
        "unsigned domain, enforce policy, its MX host in a signed zone with TLSA: only "
        "dane-only outranks MTA-STS, and an unsigned MX RRset never gives dane-only",
        _enforce("unsigneddane"),
    ),
    Case(
        "forged",
        _secure("mx.sts-forged.test"),
        "unsigned domain with an enforce policy; tests forge its MX to mx.dane-ee.test",
        _enforce("forged"),
    ),
)

SCENARIOS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {f"sts-{c.label}": (domain_of(c.label), c.expected) for c in CASES}
)
WHY: Final[Mapping[str, str]] = MappingProxyType({domain_of(c.label): c.why for c in CASES})


def _txt(record: str) -> str:
    return f'_mta-sts TXT "{record}"'


def zones(pki: Pki) -> list[Zone]:
    del pki  # certificates are chosen at start(); no TLSA here
    out: list[Zone] = []
    for case in CASES:
        domain = domain_of(case.label)
        mx = mx_of(case.label)
        policy_host = f"mta-sts.{domain}"
        records = [
            f"@ MX 10 {mx}.",
            *([] if case.label in FOREIGN_MX else [f"{mx}. A {HOSTS[mx]}"]),
            f"{policy_host}. A {HOSTS[policy_host]}",
            *(_txt(t) for t in case.txt),
        ]
        if case.label == "idchange":
            records += ["@ MX 20 mx2", f"mx2 A {HOSTS['mx2.sts-idchange.test']}"]
        out.append(Zone(domain, records, signed=case.label not in UNSIGNED))
    out.append(
        Zone(
            BULK,
            [
                f"mx A {HOSTS['mx.' + BULK]}",
                f"mta-sts A {HOSTS['mta-sts.' + BULK]}",
                f"* MX 10 mx.{BULK}.",
                f'* TXT "v=STSv1; id={TXT_ID}"',
                f"* A {HOSTS['mta-sts.' + BULK]}",
            ],
        )
    )
    return out


# -- the running policy server -------------------------------------------------------------


@dataclass
class Running:
    config_path: Path
    config: dict[str, Any]
    proc: Background

    def write(self) -> None:
        self.config["generation"] = int(self.config.get("generation", 0)) + 1
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config, indent=1))
        os.replace(tmp, self.config_path)

    def loaded_generation(self) -> int:
        path = self.config_path.with_name(self.config_path.name + ".loaded")
        try:
            return int(path.read_text() or "-1")
        except (FileNotFoundError, ValueError):
            return -1

    def reload(self) -> None:
        self.write()
        proc = self.proc.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"MTA-STS HTTPS server is not running:\n{self.proc.log_tail()}")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while self.loaded_generation() != self.config["generation"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HTTPS server did not reload:\n{self.proc.log_tail()}")
            time.sleep(POLL)


_RUNNING: dict[str, Running] = {}  # world.ns -> its policy server


def _running(world: World) -> Running:
    try:
        return _RUNNING[world.ns]
    except KeyError:
        raise RuntimeError("the MTA-STS extension is not started in this world") from None


def _write_key(key: Any, path: Path) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def start(world: World) -> Callable[[], None]:
    directory = world.dir / "sts"
    directory.mkdir(parents=True, exist_ok=True)
    certs = world.certs
    listeners: dict[str, dict[str, Any]] = {}
    for case in CASES:
        domain = domain_of(case.label)
        host = f"mta-sts.{domain}"
        chain, key = certs[host].chain, certs[host].key
        if case.label == "untrusted":
            leaf = CertAuthority(directory / "other-ca").issue([host])
            chain, key = leaf.files.chain, leaf.files.key
        elif case.label == "wrongname":
            wrong = world.ca.issue([f"www.{domain}"], stem=f"wrong.{domain}").files
            chain, key = wrong.chain, wrong.key
        listeners[host] = {
            "address": HOSTS[host],
            "port": HTTPS_PORT,
            "chain": str(chain),
            "key": str(key),
            "domain": domain,
        }
    # bulk: one listener, certificates issued per SNI name by the intermediate CA.
    ca_key, leaf_key = directory / "intermediate.key", directory / "bulk-leaf.key"
    _write_key(world.ca.intermediate_key, ca_key)
    _write_key(new_key(), leaf_key)
    bulk_host = f"mta-sts.{BULK}"
    listeners[bulk_host] = {
        "address": HOSTS[bulk_host],
        "port": HTTPS_PORT,
        "chain": str(certs[bulk_host].chain),
        "key": str(certs[bulk_host].key),
        "sni_ca": True,
    }
    config: dict[str, Any] = {
        "generation": -1,
        "listeners": listeners,
        "domains": {domain_of(c.label): dict(c.serve) for c in CASES},
        "bulk": {
            "behaviour": "ok",
            "body": policy_body("enforce", [f"mx.{BULK}"]),
            "ca_cert": str(world.ca.intermediate_file),
            "ca_key": str(ca_key),
            "ca_chain": str(world.ca.intermediate_file),
            "leaf_key": str(leaf_key),
        },
    }
    running = Running(
        directory / "https.json",
        config,
        Background(
            "mta-sts-https",
            [sys.executable, str(SERVER_SCRIPT), str(directory / "https.json")],
            directory / "https.log",
        ),
    )
    running.write()  # generation 0
    running.proc.start(lambda: running.loaded_generation() == 0, START_TIMEOUT)
    _RUNNING[world.ns] = running

    def stop() -> None:
        _RUNNING.pop(world.ns, None)
        running.proc.stop()

    return stop


# -- helpers for tests -----------------------------------------------------------------------


def set_behaviour(world: World, domain: str, **spec: Any) -> None:
    """Replace what ``domain``'s policy host serves (see tests/world/https_server.py), e.g.
    ``set_behaviour(world, d, behaviour="ok", body=policy_body("enforce", ["mx.d"]))``;
    returns once the server has reloaded."""
    running = _running(world)
    running.config["domains"][domain] = dict(spec)
    running.reload()


def update_behaviour(world: World, domain: str, **changes: Any) -> None:
    """Change some keys of what ``domain``'s policy host serves."""
    running = _running(world)
    running.config["domains"].setdefault(domain, {}).update(changes)
    running.reload()


def set_bulk_behaviour(world: World, behaviour: str) -> None:
    """What every ``<label>.bulk.test`` policy host serves (``ok`` or ``slow``)."""
    running = _running(world)
    running.config["bulk"]["behaviour"] = behaviour
    running.reload()


def take_down(world: World, domain: str) -> None:
    """Close the policy host's listener: connections to it are refused."""
    update_behaviour(world, domain, behaviour="down")


def bring_up(world: World, domain: str) -> None:
    update_behaviour(world, domain, behaviour="ok")


def set_txt(world: World, domain: str, records: list[str] | tuple[str, ...]) -> None:
    """Replace the ``_mta-sts`` TXT RRset of ``domain``'s zone, re-sign it, restart named
    (no rndc in the world) and unbound (to drop its cache)."""
    built = world.tree.find(domain)
    lines = [
        ln
        for ln in built.unsigned_file.read_text().splitlines()
        if not re.match(r"_mta-sts\s+TXT\s", ln)
    ]
    at = lines.index("; declared records") + 1
    lines[at:at] = [_txt(r) for r in records]
    built.unsigned_file.write_text("\n".join(lines) + "\n")
    sign(built)
    world.named.stop()
    world.named.start()
    world.restart_unbound()


def set_txt_id(world: World, domain: str, policy_id: str) -> None:
    set_txt(world, domain, [f"v=STSv1; id={policy_id}"])


def set_mx(world: World, domain: str, host: str) -> None:
    """Replace ``domain``'s MX RRset with one record for ``host`` (absolute), as a DNS
    forger would for an unsigned zone; restart named and unbound so nothing stale is
    served."""
    built = world.tree.find(domain)
    lines = [
        ln for ln in built.unsigned_file.read_text().splitlines() if not re.match(r"@\s+MX\s", ln)
    ]
    at = lines.index("; declared records") + 1
    lines[at:at] = [f"@ MX 10 {host.rstrip('.')}."]
    built.unsigned_file.write_text("\n".join(lines) + "\n")
    if built.keys is not None:
        sign(built)
    world.named.stop()
    world.named.start()
    world.restart_unbound()


def fetches(world: World, domain: str) -> int:
    """Policy requests the HTTPS server has seen for ``domain`` (its mta-sts host)."""
    running = _RUNNING[world.ns]
    log = running.config_path.with_name("requests.log")
    if not log.exists():
        return 0
    host = f"mta-sts.{domain}"
    return sum(1 for line in log.read_text().splitlines() if line == host)
