"""MTA-STS (RFC 8461) end to end: signed ``_mta-sts`` TXT records (bind9 + unbound), real
HTTPS policy servers with certificates from the test CA (tests/world/sts_world.py), the
real daemon, and Postfix's ``postmap -q`` as the client.

The daemon runs under ``ip netns exec``: its policy fetcher resolves ``mta-sts.<domain>``
through the system resolver, so it must see the namespace's /etc/resolv.conf (the world's
unbound), as it would see the host's in production.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.daemon import START_TIMEOUT, Daemon, base_sections
from tests.world import sts_world
from tests.world.sts_world import domain_of
from tests.world.world import World

pytestmark = pytest.mark.integration

COLD_BUDGET: Final = 3.0  # seconds a cold lookup waits for the policy fetch
MARGIN: Final = 2.0  # postmap start-up, DNS and scheduling on a busy machine
WAIT: Final = 20.0  # bound for background work (refetch after an id change, a refresh)


class NsDaemon(Daemon):
    """policyd started through ``ip netns exec``, which bind-mounts the namespace's
    resolv.conf (setns() alone, as for the base Daemon, keeps the host's)."""

    prefix: list[str]

    def start(self) -> None:
        self.write_config()
        for path in (self.socket, self.control):
            if os.path.exists(path):
                os.unlink(path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "policyd.cli.daemon",
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(self.socket) and os.path.exists(self.control)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"policyd exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"policyd did not start:\n{self.log()}")
            time.sleep(0.05)


def make_daemon(world: World, directory: Path, **sts: Any) -> NsDaemon:
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
    d = NsDaemon(directory, sections)
    d.prefix = world.exec_prefix()
    return d


@pytest.fixture(scope="module")
def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = make_daemon(world, tmp_path_factory.mktemp("mtasts"))
    d.start()
    yield d
    d.stop()


def wait_log(daemon: Daemon, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while (found := re.search(pattern, daemon.log())) is None:
        assert time.monotonic() < deadline, f"{pattern!r} not in log:\n{daemon.log()[-3000:]}"
        time.sleep(0.05)
    return found


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
        wait_log(daemon, rf"{re.escape(domain)}: mta-sts .*{why}")


def test_decision_logged_with_reason(daemon: Daemon) -> None:
    daemon.postmap("sts-enforce.test")
    wait_log(
        daemon,
        r"sts-enforce\.test: level=secure[ ,].*reason=MTA-STS enforce id=20240101a "
        r"mx=mx\.sts-enforce\.test",
    )


def test_testing_mode_noted(daemon: Daemon) -> None:
    daemon.postmap("sts-testing.test")
    wait_log(daemon, r"sts-testing\.test: .*MTA-STS testing: not enforced")


def test_strict_profile_adds_sts_attributes(daemon: Daemon) -> None:
    assert daemon.postmap("sts-enforce.test", name="strict") == [
        "secure match=mx.sts-enforce.test servername=hostname policy_type=sts "
        "policy_domain=sts-enforce.test mx_host_pattern=mx.sts-enforce.test"
    ]
    assert daemon.postmap("sts-wild.test", name="strict") == [
        "secure match=.sts-wild.test servername=hostname policy_type=sts "
        "policy_domain=sts-wild.test mx_host_pattern=*.sts-wild.test"
    ]


def test_dane_outranks_sts(daemon: Daemon) -> None:
    # dane-sts.test publishes an _mta-sts TXT too: DANE wins (RFC 8461 2).
    assert daemon.postmap("dane-sts.test") == ["dane-only"]
    assert daemon.postmap("dane-sts.test", name="strict") == ["dane-only"]


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
    wait_log(daemon, r"sts-slow\.test: mta-sts policy fetch failed: timeout", timeout=WAIT)


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
    wait_log(daemon, rf"{re.escape(domain)}: mta-sts policy id=20240202a mode=enforce")


@pytest.fixture
def eager(world: World, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that refreshes cached policies after one second."""
    d = make_daemon(world, tmp_path, refresh_interval=1.0)
    d.start()
    yield d
    d.stop()


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
