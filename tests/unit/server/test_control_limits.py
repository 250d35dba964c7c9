"""Control connections cannot be held by trickling bytes, and a new one is always admitted
(security review L7): the request deadline counts from a request's first byte, and at the
connection limit the longest-idle connection is closed for the newcomer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from policyd.codec import control
from policyd.server.control import REQUEST_TIMEOUT, ControlServer
from policyd.settings import ControlSettings
from tests.fakes import ServiceClock, run_ready
from tests.unit.server.test_control import Env, start_env

GUARD = 5.0  # seconds a failing test waits for a close that never comes


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def small(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[tuple[Env, ControlServer, ServiceClock]]:
    clock = ServiceClock()
    env, server = await start_env(
        tmp_path, capsys, ControlSettings(), max_connections=2, monotonic=clock.monotonic
    )
    yield env, server, clock
    await server.close()
    await env.service.store.close()


async def status(streams: Streams) -> bool:
    """One status request answered on this connection (False: it was closed)."""
    reader, writer = streams
    writer.write(control.encode_request(control.Status()))
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), GUARD)
    return bool(line) and json.loads(line)["ok"] is True


async def closed(streams: Streams) -> bool:
    return await asyncio.wait_for(streams[0].read(), GUARD) == b""


async def test_a_trickled_request_is_closed_at_its_deadline(
    small: tuple[Env, ControlServer, ServiceClock],
) -> None:
    env, _, clock = small
    conn = await asyncio.open_unix_connection(env.path)
    assert await status(conn)  # the server is reading this connection now
    writer = conn[1]
    writer.write(b'{"v": 1,')  # a request begins ...
    await writer.drain()
    await run_ready()
    step = REQUEST_TIMEOUT * 0.6  # ... and bytes trickle: each read is well within IDLE_TIMEOUT
    clock.advance(step)
    writer.write(b" ")
    await writer.drain()
    await run_ready()
    assert not conn[0].at_eof()  # 6 s into the request: still open
    clock.advance(step)
    writer.write(b" ")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    assert await closed(conn)  # 12 s into the request: closed, though bytes keep coming
    writer.close()


async def test_at_the_limit_the_longest_idle_is_closed_for_a_newcomer(
    small: tuple[Env, ControlServer, ServiceClock],
) -> None:
    env, server, _ = small
    first = await asyncio.open_unix_connection(env.path)
    second = await asyncio.open_unix_connection(env.path)
    assert await status(first)
    assert await status(second)  # first is now the longest idle
    third = await asyncio.open_unix_connection(env.path)
    assert await status(third)  # admitted, not refused
    assert await closed(first)
    assert await status(second)
    assert server.evicted == 1
    for _, writer in (first, second, third):
        writer.close()
