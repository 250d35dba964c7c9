"""The socketmap connection (policyd.server.socketmap._Conn) in process, on a fake
transport: replies in request order whether from memory or the slow path, reading paused
at the pipeline limit and resumed, PERM then close on a broken netstring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from policyd.codec import netstring
from policyd.config import ServerSettings
from policyd.core.evidence import Destination, DnsEvidence, DnsStatus
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.server.reply_cache import CLOCK_TICK, ReplyCache
from policyd.server.socketmap import MAX_PIPELINE, SocketmapServer, _Conn
from policyd.service import Answer, PolicyService
from tests.fakes import (
    FakeDane,
    FakeProbe,
    FakeSts,
    FakeTransport,
    MemoryStore,
    run_ready,
)
from tests.fakes import ServiceClock as Clock


class BrokenDane(FakeDane):
    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        raise RuntimeError("a bug in a source")


class Setup:
    def __init__(self, dane: FakeDane | None = None) -> None:
        self.clock = Clock()
        self.dane = dane or FakeDane()
        self.service = PolicyService(
            DEFAULT_PROFILES,
            MemoryStore(),
            self.dane,
            FakeSts(),
            FakeProbe(),
            lookup_budget=60.0,
            clock=self.clock.wall,
        )
        self.server = SocketmapServer(
            self.service, ServerSettings(), monotonic=self.clock.monotonic
        )
        self.transport = FakeTransport()
        self.conn = _Conn(self.server)
        self.conn.connection_made(self.transport)

    def hold_misses(self) -> asyncio.Event:
        """From now on the slow path waits until the returned gate opens."""
        gate = asyncio.Event()
        self.dane.gate = gate
        return gate

    def replies(self) -> list[bytes]:
        """Every reply written so far, decoded, in order."""
        dec = netstring.Decoder()
        dec.receive_data(b"".join(self.transport.written))
        out = []
        while (payload := dec.next_payload()) is not netstring.NEED_DATA:
            assert isinstance(payload, bytes)
            out.append(payload)
        return out


def request(key: str, profile: str = "postfix") -> bytes:
    return netstring.encode(f"{profile} {key}".encode())


async def warm(s: Setup, *keys: str) -> None:
    """Answer ``keys`` once, so that their replies are cached; clear what was written."""
    for key in keys:
        s.conn.data_received(request(key))
    await run_ready()
    assert len(s.transport.written) == len(keys)
    s.transport.written.clear()


async def test_a_cached_reply_is_written_at_once() -> None:
    s = Setup()
    await warm(s, "a.test")
    calls = s.dane.calls
    s.conn.data_received(request("a.test"))
    assert s.replies() == [b"NOTFOUND "]  # inside data_received: no task, no await
    assert s.dane.calls == calls
    assert not s.conn.busy


async def test_a_miss_is_written_by_its_own_task_as_it_is_answered() -> None:
    s = Setup()
    answer = s.service.answer
    answered: list[bool] = []

    async def noted(dest: Destination, profile: Profile, *, fresh: bool = False) -> Answer:
        got = await answer(dest, profile, fresh=fresh)
        answered.append(True)
        return got

    s.service.answer = noted  # type: ignore[method-assign]
    s.conn.data_received(request("new.test"))
    while not answered:
        assert not s.transport.written
        await asyncio.sleep(0)
    assert s.replies() == [b"NOTFOUND "]  # in the turn that answered: no callback's turn
    assert not s.conn.busy


async def test_pipelined_requests_are_answered_in_order() -> None:
    s = Setup()
    await warm(s, "hit.test")
    gate = s.hold_misses()
    s.dane.answers["temp.test"] = DnsEvidence(DnsStatus.FAILED, error="MX lookup: SERVFAIL")
    s.conn.data_received(request("slow.test") + request("nosuch", "nomap") + request("temp.test"))
    await run_ready()
    assert s.transport.written == []  # the first is not answered yet: nothing may pass it
    assert s.conn.busy
    gate.set()
    await run_ready()
    got = s.replies()
    assert got[0] == b"NOTFOUND "
    assert got[1].startswith(b"PERM unknown map name 'nomap'")
    assert got[2] == b"TEMP MX lookup: SERVFAIL"
    assert len(got) == 3
    assert not s.conn.busy


async def test_a_hit_behind_a_pending_request_waits_its_turn() -> None:
    s = Setup()
    await warm(s, "hit.test")
    gate = s.hold_misses()
    s.conn.data_received(request("slow.test"))
    s.conn.data_received(request("hit.test"))  # cached, but the slow one came first
    await run_ready()
    assert s.transport.written == []
    gate.set()
    await run_ready()
    assert s.replies() == [b"NOTFOUND ", b"NOTFOUND "]
    assert s.service.stats.lookups == 3  # warm, slow, and the hit answered behind it


async def test_reading_pauses_at_the_pipeline_limit_and_resumes() -> None:
    s = Setup()
    gate = s.hold_misses()
    s.conn.data_received(b"".join(request(f"d{i}.test") for i in range(MAX_PIPELINE - 1)))
    assert not s.transport.paused
    s.conn.data_received(request("last.test"))
    assert s.transport.paused
    assert s.transport.pauses == 1
    gate.set()
    await run_ready()
    assert not s.transport.paused
    assert s.transport.resumes == 1
    assert len(s.replies()) == MAX_PIPELINE


@pytest.mark.parametrize("data", [b"x:postfix a.test,", b"5:postfix a.test,", b"01:a,"])
async def test_a_broken_netstring_gets_perm_then_close(data: bytes) -> None:
    s = Setup()
    s.conn.data_received(data)
    [got] = s.replies()
    assert got.startswith(b"PERM ")
    assert s.transport.closed
    s.conn.connection_lost(None)
    assert s.server.connections == 0


async def test_requests_after_a_broken_one_are_not_answered() -> None:
    s = Setup()
    await warm(s, "a.test")
    s.conn.data_received(b"x:" + request("a.test"))
    [got] = s.replies()
    assert got.startswith(b"PERM ")
    assert s.transport.closed


async def test_a_failed_lookup_is_temp_and_the_connection_goes_on() -> None:
    s = Setup(BrokenDane())
    s.conn.data_received(request("a.test"))
    await run_ready()
    [got] = s.replies()
    assert got == b"TEMP internal error, see policyd log"
    assert not s.transport.closed


async def test_a_request_split_across_reads() -> None:
    s = Setup()
    await warm(s, "a.test")
    whole = request("a.test")
    for i in range(len(whole)):
        s.conn.data_received(whole[i : i + 1])
    assert s.replies() == [b"NOTFOUND "]
    assert s.conn.started_at == 0.0  # nothing unfinished


async def test_pending_lookups_are_cancelled_when_the_peer_goes() -> None:
    s = Setup()
    s.hold_misses()
    s.conn.data_received(request("slow.test"))
    await run_ready()
    s.conn.connection_lost(None)
    await run_ready()
    assert s.transport.written == []
    assert not s.conn.busy


async def test_at_max_connections_the_longest_idle_is_closed() -> None:
    """Activity is only flagged per request; admitting at the limit settles the order."""
    s = Setup()
    server = SocketmapServer(s.service, ServerSettings(max_connections=3))
    transports = [FakeTransport() for _ in range(4)]
    conns = [_Conn(server) for _ in transports]
    for conn, transport in zip(conns[:3], transports[:3], strict=True):
        conn.connection_made(transport)
    conns[0].data_received(request("a.test"))  # the first speaks: the second is longest idle
    await run_ready()
    conns[3].connection_made(transports[3])
    assert [t.closed for t in transports] == [False, True, False, False]
    assert server.evicted == 1
    conns[1].connection_lost(None)
    assert server.connections == 3
    # then the third, idle since it came, before the first and the newcomer
    conns[3].data_received(request("a.test"))
    extra = _Conn(server)
    extra.connection_made(FakeTransport())
    assert [t.closed for t in transports] == [False, True, True, False]


async def test_the_clock_ticks_after_the_wait_the_cache_asks_and_after_a_failed_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's ticker waits what ReplyCache.tick returns; a tick that raises still
    schedules the next one (a stopped clock would keep cached replies for ever)."""
    s = Setup()
    server = SocketmapServer(s.service, ServerSettings())
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(ReplyCache, "tick", lambda _: 0.5)
    server._tick(loop)
    assert server._ticker is not None
    assert server._ticker.when() == pytest.approx(loop.time() + 0.5, abs=0.05)
    server._ticker.cancel()

    def broken(_: ReplyCache) -> float:
        raise RuntimeError("tick failed")

    monkeypatch.setattr(ReplyCache, "tick", broken)
    with pytest.raises(RuntimeError):
        server._tick(loop)
    assert server._ticker.when() == pytest.approx(loop.time() + CLOCK_TICK, abs=0.05)
    server._ticker.cancel()
