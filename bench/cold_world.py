"""A world extension for the cold-lookup benchmark (``scenarios.EXTENSIONS``).

``cold.test`` (signed) has a wildcard A and nothing else: every ``<label>.cold.test`` is an
existing name with an implicit MX (RFC 5321 5.1: MX NODATA, then the name's own A/AAAA and
TLSA). ``coldnx.test`` (signed) has no wildcard: every ``<label>.coldnx.test`` is a
validated NXDOMAIN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from tests.world.dns import Zone
from tests.world.world import Pki, World

EXISTING: Final = "cold.test"
NXDOMAIN: Final = "coldnx.test"
ADDRESS: Final = "127.0.3.1"  # data only: nothing listens there

HOSTS: Final[Mapping[str, str]] = MappingProxyType({})
SCENARIOS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({})


def zones(pki: Pki) -> list[Zone]:
    return [Zone(EXISTING, [f"* A {ADDRESS}"]), Zone(NXDOMAIN, [])]


def start(world: World) -> Callable[[], None]:
    return lambda: None


def keys(prefix: str, count: int) -> list[str]:
    """``count`` never-seen destinations, alternating NXDOMAIN and implicit MX."""
    return [f"{prefix}{i}.{NXDOMAIN if i % 2 == 0 else EXISTING}" for i in range(count)]
