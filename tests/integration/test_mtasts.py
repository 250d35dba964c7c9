"""MTA-STS (RFC 8461) end to end: signed ``_mta-sts`` TXT records (bind9 + unbound), real
HTTPS policy servers with certificates from the test CA (tests/world/sts_world.py), the
real daemon, and Postfix's ``postmap -q`` as the client.

The daemon runs under ``ip netns exec``: its policy fetcher resolves ``mta-sts.<domain>``
through the system resolver, so it must see the namespace's /etc/resolv.conf (the world's
unbound), as it would see the host's in production.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from policyd.codec import netstring
from tests.daemon import Daemon, base_sections, running
from tests.world import sts_world
from tests.world.sts_world import domain_of
from tests.world.world import World

pytestmark = pytest.mark.integration

COLD_BUDGET: Final = 3.0  # seconds a cold lookup waits for the policy fetch
MARGIN: Final = 2.0  # postmap start-up, DNS and scheduling on a busy machine
WAIT: Final = 20.0  # bound for background work (refetch after an id change, a refresh)


def make_daemon(world: World, directory: Path, **sts: Any) -> Daemon:
    sections = base_sections(directory, world.resolver)
    sections["probe"] = {"enabled": False}  # answers from DNS and MTA-STS evidence alone
    sections["tls"] = {"ca_file": str(world.ca_file)}
    # Short DNS lifetimes so that cached answers are rebuilt (and the TXT id re-read)
    # within seconds of a change in the world.
    sections["dns"].update({"min_ttl": 0, "max_ttl": 2})
    sections["sts"] = {
        "cold_budget": COLD_BUDGET,
        "recheck_interval": 1.0,
        "retry_after_failure": 1.0,
        **sts,
    }
    # A profile for Postfix >= 3.10.5: the MTA-STS attributes (strict leaves them off).
    sections["profiles.tlsrpt"] = {"sts_attributes": True}
    return Daemon(directory, sections, prefix=world.exec_prefix())


@pytest.fixture(scope="module")
def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from running(make_daemon(world, tmp_path_factory.mktemp("mtasts")))


def secure(mx: str) -> str:
    return f"secure match={mx} servername=hostname"


# label -> a fragment of the log line that says why there is no policy
FAILURES: Final = {
    "testing": None,
    "none": None,
    "untrusted": "certificate verify failed",
    "wrongname": "certificate verify failed",
    "redirect": r"redirect not followed \(HTTP 301\)",
    "404": "HTTP 404",
    "big": "body over 65536 bytes",
    "html": "Content-Type text/html",
    "unreachable": "connect failed",
    "twotxt": r"2 v=STSv1 TXT records",
}


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("enforce", secure("mx.sts-enforce.test")),
        # MTA-STS *.sts-wild.test (one label) becomes Postfix's wider .sts-wild.test.
        ("wild", secure(".sts-wild.test")),
        # Unsigned zone, MX host mx.dane-ee.test in a signed zone with TLSA 3 1 1: DANE
        # from an unsigned MX RRset never outranks the enforce policy (security review H1).
        ("unsigneddane", secure("mx.dane-ee.test")),
        *((label, "NOTFOUND") for label in FAILURES),
    ],
)
def test_first_lookup(daemon: Daemon, world: World, label: str, expected: str) -> None:
    domain = domain_of(label)
    assert world.expected[domain] == expected  # the scenario table agrees
    t0 = time.monotonic()
    assert daemon.postmap(domain) == [expected]
    assert time.monotonic() - t0 < COLD_BUDGET + MARGIN
    why = FAILURES.get(label)
    if why is not None:
        daemon.wait_log(rf"{re.escape(domain)}: mta-sts .*{why}")


def test_decision_logged_with_reason(daemon: Daemon) -> None:
    daemon.postmap("sts-enforce.test")
    daemon.wait_log(
        r"sts-enforce\.test: level=secure[ ,].*reason=MTA-STS enforce id=20240101a "
        r"mx=mx\.sts-enforce\.test",
    )


def test_testing_mode_noted(daemon: Daemon) -> None:
    daemon.postmap("sts-testing.test")
    daemon.wait_log(r"sts-testing\.test: .*MTA-STS testing: not enforced")


def test_sts_attributes_profile_adds_attributes_and_policy_strings(daemon: Daemon) -> None:
    lines = " ".join(
        f"{{ policy_string = {line} }}"
        for line in ("version: STSv1", "mode: enforce", "mx: {mx}", f"max_age: {sts_world.MAX_AGE}")
    )
    assert daemon.postmap("sts-enforce.test", name="tlsrpt") == [
        "secure match=mx.sts-enforce.test servername=hostname policy_type=sts "
        "policy_domain=sts-enforce.test mx_host_pattern=mx.sts-enforce.test "
        + lines.replace("{mx}", "mx.sts-enforce.test")
    ]
    assert daemon.postmap("sts-wild.test", name="tlsrpt") == [
        "secure match=.sts-wild.test servername=hostname policy_type=sts "
        "policy_domain=sts-wild.test mx_host_pattern=*.sts-wild.test "
        + lines.replace("{mx}", "*.sts-wild.test")
    ]


def test_strict_profile_sends_no_postfix_310_attributes(daemon: Daemon) -> None:
    """Postfix before 3.10 defers on them (test_e2e_delivery delivers with strict)."""
    assert daemon.postmap("sts-enforce.test", name="strict") == [secure("mx.sts-enforce.test")]


def test_dane_outranks_sts(daemon: Daemon) -> None:
    # dane-sts.test publishes an _mta-sts TXT too: DANE wins (RFC 8461 2).
    assert daemon.postmap("dane-sts.test") == ["dane-only"]
    assert daemon.postmap("dane-sts.test", name="strict") == ["dane-only"]


def test_unsigned_mx_with_tlsa_host_keeps_sts(daemon: Daemon) -> None:
    """Without MTA-STS the unsigned MX RRset pointing at mx.dane-ee.test gives ``dane``;
    with an enforce policy cached, both profiles answer the policy's ``secure``."""
    assert daemon.postmap("unsignedmx.test") == ["dane"]
    domain = domain_of("unsigneddane")
    assert daemon.postmap(domain) == [secure("mx.dane-ee.test")]
    assert daemon.postmap(domain, name="strict") == [secure("mx.dane-ee.test")]
    daemon.wait_log(
        rf"{re.escape(domain)}: level=secure[ ,].*reason=MTA-STS enforce .*"
        r"DANE not on every path \(usable TLSA at mx\.dane-ee\.test, MX RRset not signed\)",
    )


def test_slow_server_is_bounded_by_cold_budget(daemon: Daemon) -> None:
    t0 = time.monotonic()
    assert daemon.postmap("sts-slow.test") == ["NOTFOUND"]
    elapsed = time.monotonic() - t0
    assert COLD_BUDGET - 0.5 <= elapsed < COLD_BUDGET + MARGIN, elapsed
    # The fetch goes on in the background (default fetch_timeout 10 s): the strict profile
    # defers rather than send without the policy it may be about to learn.
    t0 = time.monotonic()
    got = daemon.postmap("sts-slow.test", name="strict")
    assert got[0].startswith("ERROR"), got
    assert time.monotonic() - t0 < COLD_BUDGET + MARGIN
    daemon.wait_log(r"sts-slow\.test: mta-sts policy fetch failed: timeout", timeout=WAIT)


def test_txt_id_change_triggers_refetch(daemon: Daemon, world: World) -> None:
    domain = "sts-idchange.test"
    old, new = secure("mx.sts-idchange.test"), secure("mx2.sts-idchange.test")
    assert daemon.postmap(domain) == [old]
    sts_world.set_behaviour(
        world, domain, behaviour="ok", body=sts_world.policy_body("enforce", ["mx2." + domain])
    )
    # Same id: the TXT record is re-read, but the policy is not fetched again.
    for _ in range(2):
        time.sleep(2.5)
        assert daemon.postmap(domain) == [old]
    sts_world.set_txt_id(world, domain, "20240202a")
    deadline = time.monotonic() + WAIT
    while (got := daemon.postmap(domain)) != [new]:
        assert got == [old], got  # never anything weaker in between
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        time.sleep(0.5)
    daemon.wait_log(rf"{re.escape(domain)}: mta-sts policy id=20240202a mode=enforce")


@pytest.fixture
def eager(world: World, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that refreshes cached policies after one second."""
    yield from running(make_daemon(world, tmp_path, refresh_interval=1.0))


def test_https_down_after_caching_keeps_secure(eager: Daemon, world: World) -> None:
    domain = "sts-down.test"
    assert eager.postmap(domain) == [secure("mx.sts-down.test")]
    sts_world.take_down(world, domain)
    try:
        deadline = time.monotonic() + WAIT
        pattern = (
            rf"{re.escape(domain)}: mta-sts policy fetch failed: connect failed.*keeping cached"
        )
        while re.search(pattern, eager.log()) is None:
            assert eager.postmap(domain) == [secure("mx.sts-down.test")]
            assert time.monotonic() < deadline, eager.log()[-3000:]
            time.sleep(0.5)
        assert eager.postmap(domain) == [secure("mx.sts-down.test")]
    finally:
        sts_world.bring_up(world, domain)


def test_policy_not_refreshed_alerts(world: World, tmp_path: Path) -> None:
    """RFC 8461 3.3: the cached policy stays in force while its server is down, and
    once it has gone unrefreshed for [alerts] sts_stale_after, alert=sts-stale (once)."""
    d = make_daemon(world, tmp_path, refresh_interval=1.0)
    d.sections["alerts"] = {"sts_stale_after": 3.0}
    d.start()
    domain = "sts-down.test"
    wanted = f"alert=sts-stale domain={domain} seconds="
    try:
        assert d.postmap(domain) == [secure("mx.sts-down.test")]
        sts_world.take_down(world, domain)
        deadline = time.monotonic() + WAIT
        while wanted not in d.log():
            assert d.postmap(domain) == [secure("mx.sts-down.test")]
            assert time.monotonic() < deadline, d.log()[-3000:]
            time.sleep(0.5)
        assert "connect failed" in d.log().split(wanted)[1].splitlines()[0]
        time.sleep(2.0)  # further checks of the same episode stay quiet
        assert d.log().count(wanted) == 1
    finally:
        sts_world.bring_up(world, domain)
        d.stop()


def pipelined_lookups(daemon: Daemon, keys: list[str], per_connection: int = 50) -> list[bytes]:
    """Ask for every key at once, ``per_connection`` requests pipelined per unix socket
    connection (the server answers up to 64 at a time each); the replies in order."""
    socks = []
    for start in range(0, len(keys), per_connection):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(WAIT)
        sock.connect(daemon.socket)
        batch = keys[start : start + per_connection]
        sock.sendall(b"".join(netstring.encode(f"postfix {k}".encode()) for k in batch))
        socks.append((sock, len(batch)))
    replies: list[bytes] = []
    for sock, count in socks:
        decoder = netstring.Decoder()
        got: list[bytes] = []
        while len(got) < count:
            payload = decoder.next_payload()
            if payload is netstring.NEED_DATA:
                data = sock.recv(65536)
                assert data, "connection closed"
                decoder.receive_data(data)
                continue
            assert isinstance(payload, bytes)
            got.append(payload)
        sock.close()
        replies += got
    return replies


@pytest.fixture
def flooded(world: World, tmp_path: Path) -> Iterator[Daemon]:
    """A fresh daemon, and every <label>.bulk.test policy host trickling its body."""
    d = make_daemon(world, tmp_path, cold_budget=1.0)
    d.start()
    sts_world.set_bulk_behaviour(world, "slow")
    try:
        yield d
    finally:
        sts_world.set_bulk_behaviour(world, "ok")
        d.stop()


def test_slow_domain_flood_does_not_starve_first_contact(flooded: Daemon) -> None:
    """Security review H3 in the world: 400 domains whose policy fetch never finishes are
    looked up (16 fetching, the rest queued); the first lookup of a real MTA-STS domain
    still gets its policy within cold_budget."""
    t0 = time.monotonic()
    replies = pipelined_lookups(flooded, [f"flood{i}.bulk.test" for i in range(400)])
    print(f"400 slow lookups answered in {time.monotonic() - t0:.1f}s")
    assert set(replies) == {b"NOTFOUND "}, set(replies)
    t0 = time.monotonic()
    assert flooded.postmap("sts-enforce.test") == [secure("mx.sts-enforce.test")]
    elapsed = time.monotonic() - t0
    print(f"first lookup of sts-enforce.test: {elapsed:.2f}s")
    assert elapsed < 1.0 + MARGIN
    status = subprocess.run(
        [sys.executable, "-m", "policyd.cli.policyctl", "--socket", flooded.control, "status"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    print(status)
    assert re.search(r"sts fetches +running=16, queued=3\d\d, dropped=0, preempted=[1-9]", status)


def test_restart_keeps_secure_from_store(eager: Daemon, world: World) -> None:
    domain = "sts-persist.test"
    assert eager.postmap(domain) == [secure("mx.sts-persist.test")]
    sts_world.take_down(world, domain)
    try:
        eager.restart()
        assert re.search(r"mta-sts: loaded [1-9]\d* cached policies", eager.log())
        t0 = time.monotonic()
        assert eager.postmap(domain) == [secure("mx.sts-persist.test")]
        assert time.monotonic() - t0 < MARGIN  # from the store: no cold wait
    finally:
        sts_world.bring_up(world, domain)
