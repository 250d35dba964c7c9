"""A world extension for the prefetch benchmark (``scenarios.EXTENSIONS``).

``known.test`` (signed) holds 10,000 destinations ``z<n>.known.test``, each with its own
MX host ``mx<n>.known.test`` and that host's A, AAAA and TLSA records: every answer
policyd's evidence is made of exists, so each has its own RRSIG and its own TTL (60 s, the
world's) in the resolver's cache. Names without records (NODATA from a wildcard) would all
be denied by one shared NSEC record, and their answers would all expire at the same moment,
a herd no mail host sees. The TLSA data is well formed but matches no certificate: nothing
listens at the address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from tests.world.dns import Zone
from tests.world.world import Pki, World

ZONE: Final = "known.test"
DESTINATIONS: Final = 10_000
ADDRESS: Final = "127.0.3.2"  # data only: nothing listens there
ADDRESS6: Final = "2001:db8::3:2"
TLSA: Final = "3 1 1 " + "ab" * 32  # DANE-EE SPKI SHA-256, a digest of nothing in use

HOSTS: Final[Mapping[str, str]] = MappingProxyType({})
SCENARIOS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({})


def destination(i: int) -> str:
    return f"z{i}.{ZONE}"


def zones(pki: Pki) -> list[Zone]:
    records: list[str] = []
    for i in range(DESTINATIONS):
        records += [
            f"z{i} MX 10 mx{i}",
            f"mx{i} A {ADDRESS}",
            f"mx{i} AAAA {ADDRESS6}",
            f"_25._tcp.mx{i} TLSA {TLSA}",
        ]
    return [Zone(ZONE, records)]


def start(world: World) -> Callable[[], None]:
    return lambda: None
