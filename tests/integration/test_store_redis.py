"""RedisStore against a real redis-server on a unix socket: the SQLite store's behaviour, plus
the fleet case (two stores, one server) and a server that dies or stops answering."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.adapters.store_redis import EVENTS_PAGE, SCAN_COUNT, RedisStore
from tests.fakes import event

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip(
        "redis-server not found on PATH (Debian: apt-get install redis-server)",
        allow_module_level=True,
    )

START_DEADLINE = 10.0  # seconds for redis-server to answer PING after exec
STOP_DEADLINE = 5.0  # seconds for redis-server to exit after SIGKILL
SHORT_TIMEOUT = 0.5  # connect/command timeout for the tests of a dead or stuck server
# RedisStore's worst case is (1 + RETRIES) * (connect + command); leave room for a slow CI.
FAILURE_BOUND = 4 * 2 * SHORT_TIMEOUT + 2.0


class RedisServer:
    """One redis-server process on a unix socket, nothing on TCP, nothing on disk unless
    ``appendonly`` (for tests that restart it)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.appendonly = appendonly  # an fsync'ed log on disk: data survives a SIGKILL
        self.socket_path = directory / "redis.sock"
        self.log_path = directory / "redis.log"
        self.url = f"unix://{self.socket_path}"
        self.start()

    def start(self) -> None:
        """Start (again, after :meth:`stop`) on the same socket and directory."""
        assert REDIS_SERVER is not None
        directory = self.directory
        with self.log_path.open("ab") as log:
            options = {
                "port": "0",  # no TCP listener at all
                "unixsocket": str(self.socket_path),
                "unixsocketperm": "700",
                "save": "",  # no snapshots
                "appendonly": "yes" if self.appendonly else "no",
                "appendfsync": "always",
                "daemonize": "no",  # stay our child, so teardown can kill it
                "dir": str(directory),
            }
            argv = [REDIS_SERVER]
            for name, value in options.items():
                argv += [f"--{name}", value]
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"redis-server exited at start:\n{self.log_path.read_text()}")
            if self._pong():
                return
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server not ready in {START_DEADLINE}s:\n{self.log_path.read_text()}")

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.resume()  # a stopped process still dies of SIGKILL; be tidy anyway
            self.proc.kill()
            self.proc.wait(timeout=STOP_DEADLINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of the test's own, for tests that kill or stop it."""
    srv = RedisServer(tmp_path_factory.mktemp("redis-own"))
    yield srv
    srv.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Each test works under its own prefix on the shared server."""
    return f"test:{request.node.name}:"


@pytest.fixture
async def store(server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    s = await RedisStore.open(server.url, prefix=prefix)
    yield s
    await s.close()


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at the layout and to plant bad data."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


def rec(kind: Kind, key: str, value: str = '{"v": 1}', expires_at: float | None = 100.0) -> Record:
    return Record(kind, key, value, expires_at)


# --- records -------------------------------------------------------------------------------


async def test_satisfies_the_store_protocol(store: RedisStore) -> None:
    typed: Store = store  # mypy checks the structural match
    assert await typed.get(Kind.ANSWER, "absent.example") is None


async def test_put_get_roundtrip(store: RedisStore) -> None:
    value = '{"name": "bücher.example",  "list": [1, 2.5, null],\n "t": "\\u00e9"}'
    await store.put(rec(Kind.ANSWER, "a.example", value, 1_700_000_000.123456))
    await store.put(rec(Kind.OVERRIDE, "b.example", '"dane-only"', None))
    assert await store.get(Kind.ANSWER, "a.example") == rec(
        Kind.ANSWER, "a.example", value, 1_700_000_000.123456
    )
    assert await store.get(Kind.OVERRIDE, "b.example") == rec(
        Kind.OVERRIDE, "b.example", '"dane-only"', None
    )
    # Kinds are separate namespaces.
    assert await store.get(Kind.STS, "a.example") is None


async def test_put_replaces(store: RedisStore) -> None:
    await store.put(rec(Kind.STS, "a.example", '"old"', 1.0))
    await store.put(rec(Kind.STS, "a.example", '"new"', 2.0))
    assert await store.get(Kind.STS, "a.example") == rec(Kind.STS, "a.example", '"new"', 2.0)
    assert len(await store.scan(Kind.STS)) == 1


async def test_expired_records_are_kept_and_returned(store: RedisStore) -> None:
    # expires_at is stored, not enforced: callers decide.
    await store.put(rec(Kind.PROBE, "old.example", expires_at=1.0))
    assert await store.get(Kind.PROBE, "old.example") == rec(
        Kind.PROBE, "old.example", expires_at=1.0
    )
    assert [r.key for r in await store.scan(Kind.PROBE)] == ["old.example"]


async def test_delete(store: RedisStore) -> None:
    await store.put(rec(Kind.OVERRIDE, "a.example"))
    assert await store.delete(Kind.OVERRIDE, "a.example") is True
    assert await store.delete(Kind.OVERRIDE, "a.example") is False
    assert await store.get(Kind.OVERRIDE, "a.example") is None


async def test_scan_one_kind_across_many_pages(store: RedisStore) -> None:
    count = 3 * SCAN_COUNT + 7  # more than one HSCAN round trip
    for i in range(count):
        await store.put(rec(Kind.ANSWER, f"d{i}.example", f'{{"i": {i}}}', float(i)))
    await store.put(rec(Kind.STS, "other.example"))
    records = await store.scan(Kind.ANSWER)
    assert len(records) == count
    assert {r.key: (r.value, r.expires_at) for r in records} == {
        f"d{i}.example": (f'{{"i": {i}}}', float(i)) for i in range(count)
    }
    assert await store.scan(Kind.PROBE) == []


# --- flush ---------------------------------------------------------------------------------


async def _fill(store: RedisStore, keys: list[str]) -> None:
    for key in keys:
        for kind in Kind:
            await store.put(rec(kind, key))


async def test_flush_one_key_keeps_overrides_and_other_keys(store: RedisStore) -> None:
    await _fill(store, ["a.example", "b.example"])
    evidence_kinds = [k for k in Kind if k is not Kind.OVERRIDE]
    assert await store.flush("a.example") == len(evidence_kinds)
    for kind in evidence_kinds:
        assert await store.get(kind, "a.example") is None
        assert await store.get(kind, "b.example") is not None
    assert await store.get(Kind.OVERRIDE, "a.example") is not None
    assert await store.flush("a.example") == 0


async def test_flush_keeps_mta_sts_policies_unless_asked(store: RedisStore) -> None:
    # Security review L7: cached policies are trust on first use (RFC 8461 5).
    await _fill(store, ["a.example", "b.example"])
    others = [k for k in Kind if k not in (Kind.OVERRIDE, Kind.STS)]
    assert await store.flush("a.example", mta_sts=False) == len(others)
    assert await store.get(Kind.STS, "a.example") is not None
    assert await store.flush(None, mta_sts=False) == len(others)
    assert len(await store.scan(Kind.STS)) == 2
    assert await store.flush(None) == 2
    assert await store.scan(Kind.STS) == []


async def test_flush_all_keeps_overrides(store: RedisStore) -> None:
    await _fill(store, ["a.example", "b.example", "c.example"])
    evidence_kinds = [k for k in Kind if k is not Kind.OVERRIDE]
    assert await store.flush(None) == 3 * len(evidence_kinds)
    for kind in evidence_kinds:
        assert await store.scan(kind) == []
    assert sorted(r.key for r in await store.scan(Kind.OVERRIDE)) == [
        "a.example",
        "b.example",
        "c.example",
    ]
    assert await store.flush(None) == 0


async def test_flush_leaves_the_event_log(store: RedisStore) -> None:
    await store.append_event(event(1.0, "a.example", "dane -> dane-only"))
    await store.flush(None)
    await store.flush("a.example")
    assert await store.events(0.0) == [event(1.0, "a.example", "dane -> dane-only")]


# --- events --------------------------------------------------------------------------------


async def test_events_in_append_order_with_since_filter(store: RedisStore) -> None:
    # Hosts' clocks differ: order is append order, `since` filters on `at`.
    await store.append_event(event(30.0, "a.example", "first"))
    await store.append_event(event(10.0, "b.example", "second"))
    await store.append_event(event(20.5, "c.example", "third: ünïcode, spaces "))
    assert await store.events(0.0) == [
        event(30.0, "a.example", "first"),
        event(10.0, "b.example", "second"),
        event(20.5, "c.example", "third: ünïcode, spaces "),
    ]
    assert await store.events(20.5) == [
        event(30.0, "a.example", "first"),
        event(20.5, "c.example", "third: ünïcode, spaces "),
    ]
    assert await store.events(31.0) == []


async def test_malformed_event_is_skipped(
    store: RedisStore, raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await store.append_event(event(1.0, "a.example", "first"))
    await raw.xadd(f"{prefix}event-log", {"at": "1.5", "key": "x", "event": "y"})
    await raw.xadd(f"{prefix}event-log", {"at": "nan", "key": "x", "event": '{"v": 1}'})
    await store.append_event(event(2.0, "b.example", "second"))
    with caplog.at_level("WARNING"):
        assert await store.events(0.0) == [
            event(1.0, "a.example", "first"),
            event(2.0, "b.example", "second"),
        ]
    assert "2 events skipped: not an event of this version" in caplog.text


async def test_events_of_the_previous_text_format_are_skipped_and_counted(
    store: RedisStore, raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A stream written by the previous version: at / key / text, the event as one line
    # that cannot be read back safely (D3). Report goes on without those entries.
    stream = f"{prefix}event-log"
    await raw.xadd(stream, {"at": "1.0", "key": "a.example", "text": "level=dane-only reason=r"})
    await raw.xadd(
        stream, {"at": "2.0", "key": "a.example", "text": "level=encrypt reason=r previous=dane"}
    )
    await store.append_event(event(3.0, "b.example", "new"))
    with caplog.at_level("WARNING"):
        assert await store.events(0.0) == [event(3.0, "b.example", "new")]
    assert "2 events skipped" in caplog.text


async def test_events_empty(store: RedisStore) -> None:
    assert await store.events(0.0) == []


async def test_events_bounded(server: RedisServer, prefix: str) -> None:
    s = await RedisStore.open(server.url, prefix=prefix, max_events=5)
    try:
        for i in range(12):
            await s.append_event(event(float(i), f"k{i}", f"e{i}"))
        assert await s.events(0.0) == [event(float(i), f"k{i}", f"e{i}") for i in range(7, 12)]
    finally:
        await s.close()


async def test_events_across_many_pages(store: RedisStore) -> None:
    count = 2 * EVENTS_PAGE + 3  # more than one XRANGE round trip, and an exact multiple + 3
    for i in range(count):
        await store.append_event(event(float(i), "k", str(i)))
    got = await store.events(0.0)
    assert [e.reason for e in got] == [str(i) for i in range(count)]
    assert len(await store.events(float(EVENTS_PAGE))) == count - EVENTS_PAGE


# --- the fleet: several hosts, one server -------------------------------------------------


async def test_two_stores_see_each_others_writes(server: RedisServer, prefix: str) -> None:
    one = await RedisStore.open(server.url, prefix=prefix)
    two = await RedisStore.open(server.url, prefix=prefix)
    try:
        await one.put(rec(Kind.ANSWER, "a.example", '"from one"'))
        await two.put(rec(Kind.OVERRIDE, "a.example", '"from two"'))
        assert await two.get(Kind.ANSWER, "a.example") == rec(
            Kind.ANSWER, "a.example", '"from one"'
        )
        assert await one.get(Kind.OVERRIDE, "a.example") == rec(
            Kind.OVERRIDE, "a.example", '"from two"'
        )
        await one.append_event(event(1.0, "a.example", "one"))
        await two.append_event(event(2.0, "a.example", "two"))
        assert (
            await one.events(0.0)
            == await two.events(0.0)
            == [
                event(1.0, "a.example", "one"),
                event(2.0, "a.example", "two"),
            ]
        )
        assert await two.flush(None) == 1
        assert await one.get(Kind.ANSWER, "a.example") is None
        assert await one.get(Kind.OVERRIDE, "a.example") is not None
    finally:
        await one.close()
        await two.close()


async def test_prefixes_are_separate(server: RedisServer, prefix: str) -> None:
    one = await RedisStore.open(server.url, prefix=prefix + "one:")
    two = await RedisStore.open(server.url, prefix=prefix + "two:")
    try:
        await one.put(rec(Kind.ANSWER, "a.example"))
        await one.append_event(event(1.0, "a.example", "one"))
        assert await two.get(Kind.ANSWER, "a.example") is None
        assert await two.events(0.0) == []
        assert await two.flush(None) == 0
        assert await one.get(Kind.ANSWER, "a.example") is not None
    finally:
        await one.close()
        await two.close()


async def test_concurrent_calls_on_one_store(store: RedisStore) -> None:
    await asyncio.gather(*(store.put(rec(Kind.ANSWER, f"c{i}.example")) for i in range(50)))
    results = await asyncio.gather(*(store.get(Kind.ANSWER, f"c{i}.example") for i in range(50)))
    assert all(r is not None for r in results)


# --- layout: what another tool (or policyd's next version) finds in Redis ------------------


async def test_layout_and_no_redis_ttl(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    await store.put(rec(Kind.OVERRIDE, "a.example", '"secure"', 1.0))  # long expired
    await store.put(rec(Kind.ANSWER, "a.example", '{"x": 1}', 2.0))
    await store.append_event(event(3.0, "a.example", "t"))
    assert await raw.get(f"{prefix}schema") == "1"
    assert await raw.type(f"{prefix}override") == "hash"
    assert await raw.type(f"{prefix}event-log") == "stream"
    assert await raw.hget(f"{prefix}answer", "a.example") == (
        '{"value": "{\\"x\\": 1}", "expires_at": 2.0}'
    )
    # Redis never expires anything: overrides above all stay until policyd removes them.
    for name in ("schema", "override", "answer", "event-log"):
        assert await raw.ttl(f"{prefix}{name}") == -1


async def test_malformed_record_is_a_store_error_on_get(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    await raw.hset(f"{prefix}answer", "bad.example", "not json")
    with pytest.raises(StoreError, match="malformed"):
        await store.get(Kind.ANSWER, "bad.example")


async def test_scan_skips_malformed_fields_with_a_log_line(
    store: RedisStore, raw: aioredis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One bad field, from any fleet member or a hand edit, failed the whole scan: every
    # host then refused to start.
    good = Record(Kind.STS, "good.example", '{"x": 1}', 5.0)
    await store.put(good)
    bad = {
        "value.example": '{"value": 3, "expires_at": null}',
        "json.example": "not json",
        "list.example": "[1]",
        "huge.example": '{"value": "{}", "expires_at": 1' + "0" * 400 + "}",
        "nan.example": '{"value": "{}", "expires_at": NaN}',
        "bool.example": '{"value": "{}", "expires_at": true}',
    }
    for key, text in bad.items():
        await raw.hset(f"{prefix}sts", key, text)
    with caplog.at_level("WARNING"):
        assert await store.scan(Kind.STS) == [good]
    for key in bad:
        assert f"sts '{key}': malformed record" in caplog.text


async def test_wrong_type_under_the_prefix_is_a_store_error(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    await raw.set(f"{prefix}probe", "a string, not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.get(Kind.PROBE, "a.example")


# --- open ----------------------------------------------------------------------------------


async def test_open_writes_schema_and_reopens(
    server: RedisServer, raw: aioredis.Redis, prefix: str
) -> None:
    s = await RedisStore.open(server.url, prefix=prefix)
    await s.put(rec(Kind.OVERRIDE, "a.example"))
    await s.close()
    assert await raw.get(f"{prefix}schema") == "1"
    again = await RedisStore.open(server.url, prefix=prefix)
    try:
        assert await again.get(Kind.OVERRIDE, "a.example") is not None
    finally:
        await again.close()


async def test_open_refuses_a_newer_schema(
    server: RedisServer, raw: aioredis.Redis, prefix: str
) -> None:
    await raw.set(f"{prefix}schema", "2")
    await raw.hset(f"{prefix}override", "a.example", "whatever version 2 writes")
    with pytest.raises(StoreError, match=r"newer than this policyd.*refusing to touch it"):
        await RedisStore.open(server.url, prefix=prefix)
    assert await raw.get(f"{prefix}schema") == "2"
    assert await raw.hget(f"{prefix}override", "a.example") == "whatever version 2 writes"


@pytest.mark.parametrize("marker", ["banana", "0", "-3"])
async def test_open_refuses_a_foreign_schema_marker(
    server: RedisServer, raw: aioredis.Redis, prefix: str, marker: str
) -> None:
    await raw.set(f"{prefix}schema", marker)
    with pytest.raises(StoreError, match="refusing to touch it"):
        await RedisStore.open(server.url, prefix=prefix)


async def test_open_dead_socket(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"nothing-here\.sock"):
        await RedisStore.open(
            f"unix://:s3cret@{tmp_path}/nothing-here.sock",
            connect_timeout=SHORT_TIMEOUT,
            command_timeout=SHORT_TIMEOUT,
        )
    assert time.monotonic() - started < FAILURE_BOUND


async def test_open_dead_tcp_port_hides_the_password() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(StoreError) as info:
        await RedisStore.open(
            "redis://user:s3cret@127.0.0.1:1/0",
            connect_timeout=SHORT_TIMEOUT,
            command_timeout=SHORT_TIMEOUT,
        )
    assert "s3cret" not in str(info.value)
    assert "redis://127.0.0.1:1/0" in str(info.value)


@pytest.mark.parametrize(
    "url", ["sqlite:///tmp/x.db", "http://localhost:6379", "localhost:6379", "", "redis://:x"]
)
async def test_open_rejects_non_redis_urls(url: str) -> None:
    with pytest.raises(StoreError):
        await RedisStore.open(url, connect_timeout=SHORT_TIMEOUT, command_timeout=SHORT_TIMEOUT)


# --- a server that goes away --------------------------------------------------------------


async def test_killed_server_is_a_store_error_not_a_hang(own_server: RedisServer) -> None:
    s = await RedisStore.open(
        own_server.url, connect_timeout=SHORT_TIMEOUT, command_timeout=SHORT_TIMEOUT
    )
    try:
        await s.put(rec(Kind.ANSWER, "a.example"))
        own_server.stop()
        started = time.monotonic()
        async with asyncio.timeout(FAILURE_BOUND):
            with pytest.raises(StoreError):
                await s.get(Kind.ANSWER, "a.example")
            with pytest.raises(StoreError):
                await s.events(0.0)
        assert time.monotonic() - started < FAILURE_BOUND
    finally:
        await s.close()


async def test_stuck_server_is_a_store_error_within_the_command_timeout(
    own_server: RedisServer,
) -> None:
    s = await RedisStore.open(
        own_server.url, connect_timeout=SHORT_TIMEOUT, command_timeout=SHORT_TIMEOUT
    )
    try:
        await s.put(rec(Kind.ANSWER, "a.example"))
        own_server.pause()  # accepts connections (kernel backlog), never answers
        started = time.monotonic()
        async with asyncio.timeout(FAILURE_BOUND):
            with pytest.raises(StoreError):
                await s.flush(None)
        assert time.monotonic() - started < FAILURE_BOUND
    finally:
        own_server.resume()
        await s.close()


# --- close ---------------------------------------------------------------------------------


async def test_close_is_idempotent_and_final(server: RedisServer, prefix: str) -> None:
    s = await RedisStore.open(server.url, prefix=prefix)
    await s.close()
    await s.close()
    with pytest.raises(StoreError, match="closed"):
        await s.get(Kind.ANSWER, "a.example")
    with pytest.raises(StoreError, match="closed"):
        await s.append_event(event(1.0, "a.example", "x"))


async def test_close_after_the_server_died(own_server: RedisServer) -> None:
    s = await RedisStore.open(own_server.url)
    own_server.stop()
    await s.close()
    await s.close()
