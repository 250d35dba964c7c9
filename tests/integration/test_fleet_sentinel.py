"""Redis Sentinel: the store and the fleet link find the primary through a real
redis-sentinel (``redis-server --sentinel``) in front of a real redis-server on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as syncredis

from policyd.adapters.claims import Job, WorkKind
from policyd.adapters.fleet_redis import RedisFleet
from policyd.adapters.store import Kind, Record
from policyd.adapters.store_redis import RedisStore
from policyd.codec.fleet import Change
from tests.daemon import free_port
from tests.fleet_links import running, until, value

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip("redis-server not found on PATH", allow_module_level=True)

READY_DEADLINE = 15.0  # seconds for the server and the sentinel to answer
DOWN_AFTER_MS = 1000  # the Sentinel's down-after-milliseconds: failover starts after this
FAILOVER_DEADLINE = 30.0  # seconds for the replica to be promoted and the link to follow


def _spawn(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def _ready(port: int, ok: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        try:
            with syncredis.Redis(port=port, socket_timeout=1, decode_responses=True) as r:
                if ok == "ping" and r.ping():
                    return
                if ok == "primary" and r.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "policyd"
                ):
                    return
        except syncredis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail(f"port {port} not ready ({ok})")


class SentinelSetup:
    """A primary, a replica of it and one Sentinel watching them, all on loopback TCP."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.procs["primary"] = self._server("primary", self.primary_port)
        _ready(self.primary_port, "ping")
        self.procs["replica"] = self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        _ready(self.replica_port, "ping")
        conf = directory / "sentinel.conf"  # the sentinel rewrites its file: it must be ours
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor policyd 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds policyd {DOWN_AFTER_MS}\n"
            "sentinel failover-timeout policyd 10000\n"
        )
        self.procs["sentinel"] = _spawn(
            [str(REDIS_SERVER), str(conf), "--sentinel"], directory / "sentinel.log", directory
        )
        _ready(self.sentinel_port, "primary")

    def _server(self, name: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
        data = self.dir / name
        data.mkdir()
        argv = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(data), *extra]
        return _spawn(argv, self.dir / f"{name}.log", data)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/policyd"

    def primary_now(self) -> int:
        with syncredis.Redis(port=self.sentinel_port, decode_responses=True) as r:
            _host, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "policyd")
            return int(port)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


async def test_store_and_fleet_link_through_sentinel(sentinel: SentinelSetup) -> None:
    url, primary_port = sentinel.url, sentinel.primary_port
    store = await RedisStore.open(url)
    got: list[Change] = []

    async def record(change: Change) -> None:
        got.append(change)

    try:
        async with running(RedisFleet.from_url(url), record) as fleet:
            await store.put(Record(Kind.OVERRIDE, "a.test", "{}", None))
            assert await store.get(Kind.OVERRIDE, "a.test") == Record(
                Kind.OVERRIDE, "a.test", "{}", None
            )
            await until(lambda: fleet.up, READY_DEADLINE)
            assert await fleet.once(_job("a.test")) == "done"
            assert fleet.counters.work["sts"]["worked"] == 1
            with syncredis.Redis(port=primary_port, decode_responses=True) as primary:
                assert primary.hexists("policyd:override", "a.test")
                assert primary.get(fleet.result_key("sts", "a.test")) == "done"
    finally:
        await store.close()


async def test_the_fleet_link_follows_a_sentinel_failover(sentinel: SentinelSetup) -> None:
    store = await RedisStore.open(sentinel.url)
    try:
        async with running(RedisFleet.from_url(sentinel.url)) as fleet:
            await until(lambda: fleet.up, READY_DEADLINE)
            await store.put(Record(Kind.OVERRIDE, "kept.test", "{}", None))
            with syncredis.Redis(port=sentinel.primary_port) as primary:
                primary.execute_command("WAIT", 1, 5000)  # on the replica before the failover
            sentinel.kill("primary")
            await until(lambda: not fleet.up, READY_DEADLINE)
            # Meanwhile claims work here, without Redis.
            assert await fleet.once(_job("x.test")) == "done"
            assert fleet.counters.work["sts"]["local"] == 1
            await until(lambda: sentinel.primary_now() == sentinel.replica_port, FAILOVER_DEADLINE)
            await until(lambda: fleet.up, FAILOVER_DEADLINE)
            # The promoted replica serves the store and the claims.
            assert await store.get(Kind.OVERRIDE, "kept.test") is not None
            assert await fleet.once(_job("y.test")) == "done"
            assert fleet.counters.work["sts"]["worked"] == 1
            with syncredis.Redis(port=sentinel.replica_port, decode_responses=True) as promoted:
                assert promoted.get(fleet.result_key("sts", "y.test")) == "done"
    finally:
        await store.close()


def _job(domain: str) -> Job:
    """An MTA-STS fetch of ``domain``, as the claimed fetcher asks for one."""
    return Job(WorkKind.STS, domain, domain, value("done"), lease=5, keep=5)
