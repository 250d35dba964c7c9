"""Redis Sentinel: the store and the fleet link find the primary through a real
redis-sentinel (``redis-server --sentinel``) in front of a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as syncredis

from policyd.adapters.fleet_redis import RedisFleet
from policyd.adapters.store import Kind, Record
from policyd.adapters.store_redis import RedisStore
from policyd.codec.fleet import Change
from tests.daemon import free_port

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip("redis-server not found on PATH", allow_module_level=True)

READY_DEADLINE = 15.0  # seconds for the server and the sentinel to answer


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


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The sentinel URL, and the primary's port (to check where the data went)."""
    assert REDIS_SERVER is not None
    primary_port, sentinel_port = free_port(), free_port()
    procs = [
        _spawn(
            [
                REDIS_SERVER,
                "--port",
                str(primary_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            tmp_path / "redis.log",
            tmp_path,
        )
    ]
    try:
        _ready(primary_port, "ping")
        conf = tmp_path / "sentinel.conf"  # the sentinel rewrites its file: it must be ours
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor policyd 127.0.0.1 {primary_port} 1\n"
        )
        procs.append(
            _spawn([REDIS_SERVER, str(conf), "--sentinel"], tmp_path / "sentinel.log", tmp_path)
        )
        _ready(sentinel_port, "primary")
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/policyd", primary_port
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


async def test_store_and_fleet_link_through_sentinel(sentinel: tuple[str, int]) -> None:
    url, primary_port = sentinel
    store = await RedisStore.open(url)
    fleet = RedisFleet.from_url(url)
    got: list[Change] = []

    async def record(change: Change) -> None:
        got.append(change)

    async def nothing() -> None:
        return None

    task = asyncio.create_task(fleet.run(record, nothing))
    try:
        await store.put(Record(Kind.OVERRIDE, "a.test", "{}", None))
        assert await store.get(Kind.OVERRIDE, "a.test") == Record(
            Kind.OVERRIDE, "a.test", "{}", None
        )
        deadline = time.monotonic() + READY_DEADLINE
        while not fleet.up:
            assert time.monotonic() < deadline, "fleet link not up through sentinel"
            await asyncio.sleep(0.05)

        async def work() -> str:
            return "done"

        assert await fleet.once("sts", "a.test", "a.test", work, lease=5, keep=5) == "done"
        assert fleet.counters.work["sts"]["worked"] == 1
        with syncredis.Redis(port=primary_port, decode_responses=True) as primary:
            assert primary.hexists("policyd:override", "a.test")
            assert primary.get(fleet.result_key("sts", "a.test")) == "done"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fleet.close()
        await store.close()
