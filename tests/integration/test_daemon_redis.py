"""The daemon on a shared Redis store: two mail hosts, one cache and one set of overrides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as syncredis

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
    sections = base_sections(directory, world.resolver, store=redis.url)
    sections["probe"] = {"enabled": False}
    return Daemon(directory, sections)


def test_two_hosts_share_overrides_through_redis(
    world: World, tmp_path: Path, redis: RedisServer
) -> None:
    first = host(world, tmp_path / "a", redis)
    second = host(world, tmp_path / "b", redis)
    first.start()
    try:
        res = first.policyctl("override", "set", "shared.test", "encrypt")
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


def test_bad_records_in_the_shared_store_never_stop_a_host_from_starting(
    world: World, tmp_path: Path, redis: RedisServer
) -> None:
    # One record no host can read (a hand edit, a newer or buggy fleet member) made every
    # host exit at start: OverflowError from a huge integer, or a StoreError for the
    # whole scan from one malformed field. Overrides could inject Postfix attributes, and
    # a newline in a comment turned the destination into TEMP.
    huge = "1" + "0" * 400
    client = syncredis.Redis.from_url(redis.url, decode_responses=True)
    try:

        def envelope(value: str) -> str:
            return json.dumps({"value": value, "expires_at": None})

        client.set("policyd:schema", "1")
        client.hset("policyd:probe", "notjson.test", "not json")
        client.hset(
            "policyd:probe",
            "huge.test",
            envelope(
                '{"v":1,"level":"verify","hosts":[],"verified_names":[],"pending":null,'
                f'"pending_count":0,"pending_since":0,"probed_at":{huge}}}'
            ),
        )
        client.hset(
            "policyd:sts",
            "huge.test",
            envelope(
                '{"v":1,"id":"a1","mode":"enforce","mx":["mx.huge.test"],"max_age":86400,'
                f'"fetched_at":{huge}}}'
            ),
        )
        client.hset(
            "policyd:override",
            "expires.test",
            envelope(f'{{"policy":"encrypt","expires_at":{huge}}}'),
        )
        client.hset(
            "policyd:override",
            "inject.test",
            envelope('{"policy":"verify match=.inject.test,tafile=/etc/passwd"}'),
        )
        client.hset(
            "policyd:override",
            "comment.test",
            envelope(json.dumps({"policy": "encrypt", "comment": "ticket 1\nline 2"})),
        )
        client.hset("policyd:override", "good.test", envelope('{"policy":"encrypt"}'))
    finally:
        client.close()
    first = host(world, tmp_path / "a", redis)
    second = host(world, tmp_path / "b", redis)
    first.start()
    second.start()
    try:
        for d in (first, second):
            got = d.postmap("good.test", "comment.test", "inject.test")
            assert got[:2] == ["encrypt", "encrypt"], d.log()
            assert "tafile" not in got[2]
            log = d.log()
            assert "inject.test: ignoring unreadable override" in log
            assert "expires.test: ignoring unreadable override" in log
            assert "huge.test: stored probe result ignored" in log
            assert "huge.test: ignoring unreadable mta-sts record" in log
            assert "'notjson.test': malformed record" in log
    finally:
        second.stop()
        first.stop()
