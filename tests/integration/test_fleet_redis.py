"""RedisFleet against a real redis-server: leases, take-over, owner-only release, one
session per remote address for many MX names, and the link going down and up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from policyd.adapters.claims import ClaimBusy, Job, WorkKind
from policyd.adapters.fleet_redis import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    PING_INTERVAL,
    SILENCE_LIMIT,
    ChangeHandler,
    RedisFleet,
)
from policyd.codec.fleet import Change, ChangeKind
from policyd.core.evidence import DnsStatus, MxHost, ProbeHost, ProbeVerdict
from policyd.settings import ProbeSettings
from policyd.sources.fleet_work import ADDRESS_SPACING, claimed_prober
from tests.fleet_links import running, until, value
from tests.integration.test_store_redis import RedisServer

pytestmark = pytest.mark.integration

LINK_DEADLINE = 10.0  # seconds for a fleet link to come up


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
async def fleets(server: RedisServer) -> AsyncIterator[list[RedisFleet]]:
    """Three hosts' links to one server, subscribed and up."""
    hosts = [RedisFleet.from_url(server.url) for _ in range(3)]
    for i, f in enumerate(hosts):
        f.origin = f"host{i}"
    async with contextlib.AsyncExitStack() as stack:
        for f in hosts:
            await stack.enter_async_context(running(f))
        await until(lambda: all(f.up for f in hosts), LINK_DEADLINE)
        yield hosts


@pytest.fixture
async def direct(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the server, for the test to play another (dead, stuck) host."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


async def lease_elsewhere(
    direct: aioredis.Redis, fleet: RedisFleet, kind: str, claim: str, *, ms: int
) -> float:
    """A lease on ``claim`` for ``ms`` milliseconds, held by a host that never releases it
    (dead or stuck); when it was taken (time.monotonic)."""
    await direct.set(fleet.claim_key(kind, claim), "another-host", px=ms)
    return time.monotonic()


async def test_one_of_many_concurrent_askers_does_the_work(fleets: list[RedisFleet]) -> None:
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return "findings"

    results = await asyncio.gather(
        *(
            f.once(Job(WorkKind.PROBE, "[192.0.2.1]:25", "x", work, lease=5, keep=5))
            for f in fleets * 3
        )
    )
    assert results == ["findings"] * 9
    assert calls == 1
    worked = sum(f.counters.work["probe"]["worked"] for f in fleets)
    shared = sum(f.counters.work["probe"]["shared"] for f in fleets)
    assert (worked, shared) == (1, 8)


async def test_a_lease_left_by_a_dead_holder_is_taken_over_when_it_expires(
    fleets: list[RedisFleet], direct: aioredis.Redis
) -> None:
    first, second, _ = fleets
    # A holder that died mid-work: its lease stays until it expires, and no result comes.
    started = await lease_elsewhere(direct, first, "sts", "dead.test", ms=800)
    got = await second.once(
        Job(WorkKind.STS, "dead.test", "dead.test", value("mine"), lease=5, keep=5)
    )
    took = time.monotonic() - started
    assert got == "mine"
    assert 0.7 < took < 2.0  # waited for the expiry, not for its own lease of 5 s
    assert await direct.get(first.claim_key("sts", "dead.test")) is None  # released


async def test_only_the_holder_releases_its_lease(
    fleets: list[RedisFleet], direct: aioredis.Redis
) -> None:
    first = fleets[0]
    key = first.claim_key("probe", "[192.0.2.9]:25")

    async def slow() -> str:
        await asyncio.sleep(0.6)  # outlives its lease of 0.2 s
        return "late"

    async def successor() -> str:
        await asyncio.sleep(0.3)
        # The first lease ran out: this one is the successor's, with its own token.
        assert await direct.set(key, "successor", nx=True, px=10_000)
        return "x"

    await asyncio.gather(
        first.once(Job(WorkKind.PROBE, "[192.0.2.9]:25", "r1", slow, lease=0.2, keep=0)),
        successor(),
    )
    assert await direct.get(key) == "successor"  # the late holder did not delete it


async def test_many_mx_names_on_one_address_get_one_session_at_a_time(
    fleets: list[RedisFleet],
) -> None:
    # The review's M5: attacker names all pointing at one third-party address.
    settings = ProbeSettings(total_timeout=5.0, host_min_interval=60.0)
    running = peak = sessions = 0
    started: list[float] = []

    async def prober(mx: MxHost, port: int) -> list[ProbeHost]:
        nonlocal running, peak, sessions
        started.append(time.monotonic())
        running += 1
        sessions += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        host = mx.name.rstrip(".")
        return [ProbeHost(host, a, ProbeVerdict.NO_STARTTLS, probed_at=1.0) for a in mx.addresses]

    probers = [claimed_prober(prober, f, settings) for f in fleets]
    hosts = [
        MxHost(f"mx{i}.attacker.test", 10, DnsStatus.INSECURE, ("198.51.100.25",)) for i in range(4)
    ]
    found = await asyncio.gather(*(p(mx, 25) for p in probers for mx in hosts))
    assert peak == 1  # never two sessions to the address at once, fleet-wide
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) >= ADDRESS_SPACING, gaps  # and spaced, whichever host probes
    assert sessions == len(hosts)  # one per MX name, not one per name and host
    assert all(len(f) == 1 and f[0].verdict is ProbeVerdict.NO_STARTTLS for f in found)
    assert {f[0].host for f in found} == {mx.name for mx in hosts}


async def test_a_wait_is_bounded_by_the_holders_lease(
    fleets: list[RedisFleet], direct: aioredis.Redis
) -> None:
    first, second, _ = fleets
    started = await lease_elsewhere(direct, first, "probe", "[192.0.2.7]:25", ms=60_000)
    with pytest.raises(ClaimBusy):
        await second.once(
            Job(WorkKind.PROBE, "[192.0.2.7]:25", "r", value("never"), lease=0.3, keep=1)
        )
    assert time.monotonic() - started < 0.3 + 1.0 + 0.6  # lease + grace + one poll
    assert second.counters.work["probe"]["busy"] == 1


async def test_changes_reach_the_other_hosts_not_the_sender(server: RedisServer) -> None:
    got: dict[str, list[Change]] = {"a": [], "b": []}

    def recorder(name: str) -> ChangeHandler:
        async def record(change: Change) -> None:
            got[name].append(change)

        return record

    a, b = RedisFleet.from_url(server.url), RedisFleet.from_url(server.url)
    a.origin, b.origin = "a", "b"
    async with running(a, recorder("a")), running(b, recorder("b")):
        await until(lambda: a.up and b.up, LINK_DEADLINE)
        await a.publish(Change(ChangeKind.OVERRIDE, "example.test"))
        await until(lambda: len(got["b"]) == 1, 1.0)
        assert got["b"][0] == Change(ChangeKind.OVERRIDE, "example.test", "a")
        assert got["a"] == []


async def test_redis_down_means_local_work_then_the_link_comes_back(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyd.fleet")
    resynced = 0

    async def resync() -> None:
        nonlocal resynced
        resynced += 1

    async with running(RedisFleet.from_url(server.url), on_connect=resync) as f:
        await until(lambda: f.up, LINK_DEADLINE)
        server.stop()
        await until(lambda: not f.up, LINK_DEADLINE)
        started = time.monotonic()
        got = await f.once(
            Job(WorkKind.STS, "down.test", "down.test", value("here"), lease=5, keep=5)
        )
        assert got == "here"
        assert time.monotonic() - started < 0.5  # no wait on a link known to be down
        assert f.counters.work["sts"]["local"] == 1
        # Spacing between sessions to one address holds without Redis too.
        starts: list[float] = []

        async def stamp() -> str:
            starts.append(time.monotonic())
            return "x"

        await asyncio.gather(
            *(
                f.once(Job(WorkKind.PROBE, "[192.0.2.3]:25", n, stamp, lease=5, keep=5, rest=0.3))
                for n in "ab"
            )
        )
        assert starts[1] - starts[0] >= 0.3
        await f.publish(Change(ChangeKind.FLUSH, None))
        assert f.counters.publish_failures == 1
        await asyncio.sleep(2.0)  # several reconnect attempts fail meanwhile
        server.start()
        await until(lambda: f.up, 40.0)
        assert resynced == 2  # at the first connect and after the outage
    downs = [r for r in caplog.records if "link to" in r.message and " down" in r.message]
    ups = [r for r in caplog.records if "link to" in r.message and " up" in r.message]
    assert (len(downs), len(ups)) == (1, 2)


async def test_a_stuck_redis_costs_a_claim_seconds_and_is_noticed(server: RedisServer) -> None:
    async with running(RedisFleet.from_url(server.url)) as f:
        try:
            await until(lambda: f.up, LINK_DEADLINE)
            server.pause()  # SIGSTOP: connections stay open, nothing answers
            started = time.monotonic()
            job = Job(WorkKind.STS, "stuck.test", "stuck.test", value("here"), lease=30, keep=5)
            assert await f.once(job) == "here"
            assert time.monotonic() - started < 2 * (CONNECT_TIMEOUT + COMMAND_TIMEOUT) + 0.5
            assert f.counters.work["sts"]["local"] == 1
            await until(lambda: not f.up, SILENCE_LIMIT + PING_INTERVAL + 2.0)
            server.resume()
            await until(lambda: f.up, 40.0)
        finally:
            server.resume()
