"""The daemon on a shared Redis store: two mail hosts, one cache and one set of overrides."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, base_sections
from tests.integration.test_store_redis import RedisServer
from tests.world.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis-daemon"))
    yield srv
    srv.stop()


def host(world: World, directory: Path, redis: RedisServer) -> Daemon:
    directory.mkdir()
    sections = base_sections(directory, world.resolver)
    sections["store"] = {"url": redis.url}
    sections["probe"] = {"enabled": False}
    return Daemon(directory, sections)


def policyctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd.cli.policyctl", "--socket", d.control, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_two_hosts_share_overrides_through_redis(
    world: World, tmp_path: Path, redis: RedisServer
) -> None:
    first = host(world, tmp_path / "a", redis)
    second = host(world, tmp_path / "b", redis)
    first.start()
    try:
        res = policyctl(first, "override", "set", "shared.test", "encrypt")
        assert res.returncode == 0, res.stderr
        assert first.postmap("shared.test") == ["encrypt"]
        # The second host starts later and reads the override from the shared store.
        second.start()
        assert second.postmap("shared.test") == ["encrypt"]
        # After a restart the first host still answers from Redis.
        first.restart()
        assert first.postmap("shared.test") == ["encrypt"]
    finally:
        second.stop()
        first.stop()


def test_unreachable_redis_is_a_clear_error_at_start(world: World, tmp_path: Path) -> None:
    d = Daemon(tmp_path, base_sections(tmp_path, world.resolver))
    d.sections["store"] = {"url": f"unix://{tmp_path}/nothing-here.sock"}
    with pytest.raises(RuntimeError, match="exited 1"):
        d.start()
    assert "store:" in d.log()
