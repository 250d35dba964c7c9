"""The DANE scenarios (RFC 7672) as data: zones under ``test.`` and the answer policyd
should give for each.

Every MX host has its own address (``tests.world.addresses.HOSTS``) and a leaf certificate
from the world's CA, so later SMTP servers can present exactly what the TLSA records name:
``world.certs["mx.dane-ee.test"] -> (cert, key, chain)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from tests.world.addresses import HOSTS
from tests.world.ca import tlsa_rdata
from tests.world.dns import Zone
from tests.world.world import Pki, World, build_world


@dataclass(frozen=True)
class Scenario:
    name: str  # what tests use: world.scenarios[name] is the domain to look up
    domain: str
    expected: str  # policyd's answer: a level ("dane-only", "dane"), "NOTFOUND" or "TEMP"
    why: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("dane-ee", "dane-ee.test", "dane-only", "signed MX, TLSA 3 1 1 of the real leaf"),
    Scenario("dane-ta", "dane-ta.test", "dane-only", "signed MX, TLSA 2 0 1 of the intermediate"),
    Scenario(
        "dane-mismatch",
        "dane-mismatch.test",
        "dane-only",
        "usable TLSA that matches no served key: still dane-only, Postfix then refuses",
    ),
    Scenario("dane-partial", "dane-partial.test", "dane", "mx1 has TLSA, mx2 has none"),
    Scenario("insecure", "insecure.test", "NOTFOUND", "unsigned zone: its TLSA is ignored"),
    Scenario("bogus", "bogus.test", "TEMP", "DS in test. matches no key: SERVFAIL"),
    Scenario("expired", "expired.test", "TEMP", "signatures expired: SERVFAIL"),
    Scenario(
        "tlsa-bogus",
        "tlsa-bogus.test",
        "dane-only",
        "mx.tlsa-bogus.test is fine; mx.bogushost.test (2nd MX) sits in a zone with expired "
        "signatures, so its A and TLSA lookups are bogus and that host alone is skipped",
    ),
    Scenario(
        "mx-cname",
        "cname.mx-cname.test",
        "dane-only",
        "the domain is a CNAME to real.mx-cname.test, whose signed MX host has TLSA 3 1 1",
    ),
    Scenario("implicit", "implicit.test", "dane-only", "no MX: implicit MX = apex A + TLSA"),
    Scenario(
        "aaaa-bogus",
        "aaaa-bogus.test",
        "dane-only",
        "the one MX host's AAAA answer is bogus (SERVFAIL), its A answer secure: the host "
        "is used over IPv4 with its TLSA, as Postfix does (was TEMP)",
    ),
    Scenario("nullmx", "nullmx.test", "NOTFOUND", "MX 0 . (RFC 7505): no mail at all"),
    Scenario("nonexistent", "nonexistent.test", "NOTFOUND", "NXDOMAIN, validated (AD)"),
    Scenario("dane-sts", "dane-sts.test", "dane-only", "DANE outranks MTA-STS (RFC 8461 2)"),
    Scenario("plain", "plain.test", "NOTFOUND", "signed MX without TLSA: no DANE"),
    Scenario(
        "unsignedmx",
        "unsignedmx.test",
        "dane",
        "insecure MX RRset pointing at the signed host mx.dane-ee.test with TLSA",
    ),
)

# A key no server ever presents: its TLSA can never match (dane-mismatch).
DECOY: tuple[str, ...] = ("decoy.invalid",)


def a(host: str) -> str:
    return f"{host}. A {HOSTS[host]}"


def tlsa_ee(pki: Pki, host: str, port: int = 25) -> str:
    """DANE-EE(3) SPKI(1) SHA-256(1) for the host's own leaf."""
    return f"_{port}._tcp.{host}. TLSA {tlsa_rdata(pki.leaves[host].cert, 3, 1, 1)}"


def secure_mx(pki: Pki, zone: str, *, tlsa: bool = True, signed: bool = True) -> Zone:
    """A zone whose single MX host ``mx.<zone>`` has an address and (``tlsa``) a TLSA."""
    host = f"mx.{zone}"
    records = [f"@ MX 10 {host}.", a(host)] + ([tlsa_ee(pki, host)] if tlsa else [])
    return Zone(zone, records, signed=signed)


def zones(pki: Pki) -> list[Zone]:
    decoy = pki.ca.issue(list(DECOY), stem="decoy")
    intermediate = pki.ca.intermediate_cert
    return [
        Zone("test."),
        secure_mx(pki, "dane-ee.test"),
        Zone(
            "dane-ta.test",
            [
                "@ MX 10 mx",
                a("mx.dane-ta.test"),
                f"_25._tcp.mx TLSA {tlsa_rdata(intermediate, 2, 0, 1)}",
            ],
        ),
        Zone(
            "dane-mismatch.test",
            [
                "@ MX 10 mx",
                a("mx.dane-mismatch.test"),
                f"_25._tcp.mx TLSA {tlsa_rdata(decoy.cert, 3, 1, 1)}",
            ],
        ),
        Zone(
            "dane-partial.test",
            [
                "@ MX 10 mx1",
                "@ MX 20 mx2",
                a("mx1.dane-partial.test"),
                a("mx2.dane-partial.test"),
                tlsa_ee(pki, "mx1.dane-partial.test"),
            ],
        ),
        secure_mx(pki, "insecure.test", signed=False),
        Zone("bogus.test", secure_mx(pki, "bogus.test").records, bogus="bad-ds"),
        Zone("expired.test", secure_mx(pki, "expired.test").records, bogus="expired"),
        Zone(
            "tlsa-bogus.test",
            [
                "@ MX 10 mx",
                "@ MX 20 mx.bogushost.test.",
                a("mx.tlsa-bogus.test"),
                tlsa_ee(pki, "mx.tlsa-bogus.test"),
            ],
        ),
        Zone(
            "bogushost.test",
            [a("mx.bogushost.test"), tlsa_ee(pki, "mx.bogushost.test")],
            bogus="expired",
        ),
        Zone(
            "mx-cname.test",
            [
                "cname CNAME real",
                "real MX 10 mx",
                a("mx.mx-cname.test"),
                tlsa_ee(pki, "mx.mx-cname.test"),
            ],
        ),
        Zone("implicit.test", [a("implicit.test"), tlsa_ee(pki, "implicit.test")]),
        Zone(
            "aaaa-bogus.test",
            [
                "@ MX 10 mx",
                f"mx A {HOSTS['mx.dane-ee.test']}",  # the dane-ee server, same leaf
                "mx AAAA 2001:db8::25",
                f"_25._tcp.mx TLSA {tlsa_rdata(pki.leaves['mx.dane-ee.test'].cert, 3, 1, 1)}",
            ],
            bogus="bad-aaaa-sig",
        ),
        Zone("nullmx.test", ["@ MX 0 ."]),
        Zone(
            "dane-sts.test",
            [
                *secure_mx(pki, "dane-sts.test").records,
                '_mta-sts TXT "v=STSv1; id=1"',
                a("mta-sts.dane-sts.test"),
            ],
        ),
        secure_mx(pki, "plain.test", tlsa=False),
        Zone("unsignedmx.test", ["@ MX 10 mx.dane-ee.test."], signed=False),
    ]


class Extension(Protocol):
    """A module that grows the world (MTA-STS HTTPS servers, SMTP servers, ...).

    ``HOSTS``: its own host names and addresses (disjoint from every other table);
    ``zones(pki)``: zones to add (each extension owns its zones);
    ``start(world)``: start its servers once DNS runs, returning a stop function;
    ``SCENARIOS``: name -> (domain, expected answer) for tests.
    """

    HOSTS: Mapping[str, str]
    SCENARIOS: Mapping[str, tuple[str, str]]

    def zones(self, pki: Pki) -> list[Zone]: ...

    def start(self, world: World) -> Callable[[], None]: ...


# Extension modules, in start order; each lives in its own file under tests/world/.
EXTENSIONS: tuple[str, ...] = ("tests.world.sts_world", "tests.world.smtp_world")


def _extensions() -> list[Extension]:
    found: list[Extension] = []
    for name in EXTENSIONS:
        if importlib.util.find_spec(name) is not None:
            found.append(cast(Extension, importlib.import_module(name)))
    return found


def build(tmpdir: Path) -> World:
    """The world: a CA with a leaf per host, every zone, named and unbound, then the
    extensions' servers."""
    exts = _extensions()
    hosts = dict(HOSTS)
    for ext in exts:
        clash = hosts.keys() & ext.HOSTS.keys()
        if clash or set(hosts.values()) & set(ext.HOSTS.values()):
            raise ValueError(f"world extension reuses hosts or addresses: {sorted(clash)}")
        hosts.update(ext.HOSTS)
    pki = Pki.create(tmpdir / "pki", list(hosts))
    all_zones = zones(pki)
    for ext in exts:
        all_zones += ext.zones(pki)
    world = build_world(tmpdir, all_zones, pki=pki)
    world.hosts = hosts
    world.scenarios = {s.name: s.domain for s in SCENARIOS}
    world.expected = {s.domain: s.expected for s in SCENARIOS}
    try:
        for ext in exts:
            for name, (domain, expected) in ext.SCENARIOS.items():
                world.scenarios[name] = domain
                world.expected[domain] = expected
            world.closers.append(ext.start(world))
    except BaseException:
        world.close()
        raise
    return world
