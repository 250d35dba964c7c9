"""DANE (RFC 7672) end to end: real signed zones (bind9), a real validating resolver
(unbound), the real daemon, and Postfix's postmap as the client."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, base_sections
from tests.world.world import World

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("dane")
    sections = base_sections(directory, world.resolver)
    # No probes in these tests: the answers must come from DNS evidence alone.
    sections["probe"] = {"enabled": False}
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": 1.0}
    d = Daemon(directory, sections)
    d.start()
    yield d
    d.stop()


CASES = [
    ("dane-ee.test", "dane-only"),
    ("dane-ta.test", "dane-only"),
    # TLSA not matching the served certificate is still dane-only: Postfix then refuses
    # to deliver, which is the point.
    ("dane-mismatch.test", "dane-only"),
    ("dane-partial.test", "dane"),
    ("insecure.test", "NOTFOUND"),
    ("plain.test", "NOTFOUND"),
    ("implicit.test", "dane-only"),
    ("nullmx.test", "NOTFOUND"),
    ("nonexistent.test", "NOTFOUND"),
    # The insecure MX RRset points at a signed host with TLSA: dane, never dane-only.
    ("unsignedmx.test", "dane"),
    # DANE outranks MTA-STS (RFC 8461 2).
    ("dane-sts.test", "dane-only"),
    # The one MX host's AAAA is bogus (SERVFAIL), its A secure: used over IPv4 with its
    # TLSA, as Postfix does; one failed address family was TEMP for the whole domain.
    ("aaaa-bogus.test", "dane-only"),
]


@pytest.mark.parametrize(("domain", "expected"), CASES)
def test_dane_levels(daemon: Daemon, domain: str, expected: str) -> None:
    assert daemon.postmap(domain) == [expected]


def test_decision_logged_with_reason(daemon: Daemon) -> None:
    daemon.postmap("dane-ee.test")
    daemon.wait_log(re.escape("dane-ee.test: level=dane-only reason=DANE: signed MX, usable TLSA"))


@pytest.mark.parametrize("domain", ["bogus.test", "expired.test"])
def test_bogus_zone_is_temp(daemon: Daemon, domain: str) -> None:
    got = daemon.postmap(domain)
    assert got[0].startswith("ERROR"), got  # postmap reports the TEMP as a lookup error
    daemon.wait_log(re.escape(f"{domain}: level=TEMP reason=MX lookup"))


def test_one_bogus_host_does_not_block_the_other(daemon: Daemon) -> None:
    # mx2's TLSA lookup is bogus: Postfix must skip it, the good host keeps DANE.
    assert daemon.postmap("tlsa-bogus.test") == ["dane-only"]
    daemon.wait_log(re.escape("tlsa-bogus.test: level=dane-only"))
    assert "skipped:" in daemon.log()


def test_mx_cname(daemon: Daemon, world: World) -> None:
    assert daemon.postmap(world.scenarios["mx-cname"]) == ["dane-only"]


def test_resolver_unreachable_is_temp_within_budget(world: World, tmp_path: Path) -> None:
    sections = base_sections(tmp_path, world.resolver)
    sections["probe"] = {"enabled": False}
    sections["server"]["lookup_budget"] = 4.0
    d = Daemon(tmp_path, sections)
    d.start()
    try:
        assert d.postmap("dane-ee.test") == ["dane-only"]
        world.stop_unbound()
        try:
            d.restart()
            t0 = time.monotonic()
            got = d.postmap("dane-ta.test")  # never seen: nothing to keep
            assert got[0].startswith("ERROR"), got
            assert time.monotonic() - t0 < 6.0
            # a known destination keeps its answer (from the store) through the outage
            assert d.postmap("dane-ee.test") == ["dane-only"]
        finally:
            world.start_unbound()
    finally:
        d.stop()
