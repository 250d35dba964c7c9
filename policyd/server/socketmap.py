"""The socketmap listener: Postfix's smtp_tls_policy_maps client talks to this.

Built on ``asyncio.Protocol`` rather than streams: a cached answer is written from inside
``data_received`` with no task, no await and no buffer copy beyond the netstring decoder,
which is what makes the hot path fast. Replies leave in request order; misses are answered
by tasks whose results are written as the head of the per-connection queue completes.

Limits, each named in :class:`~policyd.config.ServerSettings`: request size (PERM and close
beyond it), time to finish a started request, idle time, number of connections, and a cap
on pipelined requests per connection (reading pauses beyond it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import typing
from typing import Final

from policyd.codec import netstring, socketmap
from policyd.config import Listener, ServerSettings, parse_listener, socket_mode
from policyd.server.unixsock import BoundSocket, apply_socketmap_perms, claim_unix_path
from policyd.service import PolicyService

log = logging.getLogger("policyd")

MAX_PIPELINE: Final = 64  # unanswered requests per connection before reading pauses
SWEEP_INTERVAL: Final = 1.0  # seconds between idle/request timeout sweeps
DRAIN_TIMEOUT: Final = 5.0  # seconds SIGTERM waits for lookups in flight
LISTEN_BACKLOG: Final = 1024


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_decoder",
        "_paused",
        "_pending",
        "_server",
        "_transport",
        "last_activity",
        "peer",
        "started_at",
    )

    def __init__(self, server: SocketmapServer) -> None:
        self._server = server
        self._decoder = netstring.Decoder(server.settings.max_request)
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._closed = False
        self.peer = "-"
        self.last_activity = time.monotonic()
        self.started_at = 0.0  # when the unfinished request began; 0: none

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        if not self._server.admit(self):
            transport.abort()
            self._closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.forget(self)
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception:  # the per-connection catch-all: one bad peer never stops others
            log.exception("socketmap %s: internal error, closing connection", self.peer)
            self.close()

    # -- request handling --------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.receive_data(data)
        now = time.monotonic()
        self.last_activity = now
        service = self._server.service
        transport = self._transport
        assert transport is not None
        while not self._closed:
            try:
                payload = decoder.next_payload()
            except netstring.NetstringError as exc:
                self._fail(str(exc))
                return
            if payload is netstring.NEED_DATA:
                break
            if not self._pending:
                hit = service.cached_reply(payload)
                if hit is not None:
                    transport.write(hit)
                    continue
            fut = asyncio.ensure_future(service.reply_for(payload))
            self._pending.append(fut)
            fut.add_done_callback(self._flush)
            if len(self._pending) >= MAX_PIPELINE and not self._paused:
                self._paused = True
                transport.pause_reading()
        self.started_at = now if decoder.buffered else 0.0

    def _flush(self, _done: asyncio.Future[bytes]) -> None:
        pending = self._pending
        transport = self._transport
        while pending and pending[0].done():
            fut = pending.popleft()
            if fut.cancelled() or self._closed or transport is None:
                continue
            exc = fut.exception()
            if exc is not None:
                log.error("socketmap %s: lookup failed: %r", self.peer, exc)
                reply = netstring.encode(
                    socketmap.reply(socketmap.Status.TEMP, "internal error, see policyd log")
                )
            else:
                reply = fut.result()
            transport.write(reply)
        if self._paused and len(pending) < MAX_PIPELINE // 2 and transport is not None:
            self._paused = False
            transport.resume_reading()
        self.last_activity = time.monotonic()

    def _fail(self, why: str) -> None:
        """PERM for a protocol error, then close: the stream cannot be resynchronised."""
        log.warning("socketmap %s: bad request: %s", self.peer, why)
        if self._transport is not None:
            self._transport.write(netstring.encode(socketmap.reply(socketmap.Status.PERM, why)))
        self.close()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    @property
    def busy(self) -> bool:
        return bool(self._pending)


class SocketmapServer:
    def __init__(self, service: PolicyService, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self._conns: set[_Conn] = set()
        self._servers: list[asyncio.Server] = []
        self._bound: list[BoundSocket] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.refused = 0

    @property
    def connections(self) -> int:
        return len(self._conns)

    def admit(self, conn: _Conn) -> bool:
        if len(self._conns) >= self.settings.max_connections:
            self.refused += 1
            if self.refused % 100 == 1:
                log.warning(
                    "socketmap: %d connections reached, refusing %s (refused so far: %d)",
                    self.settings.max_connections,
                    conn.peer,
                    self.refused,
                )
            return False
        self._conns.add(conn)
        return True

    def forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for spec in self.settings.socketmap:
            listener = parse_listener(spec)
            self._servers.append(await self._listen(loop, listener))
        self._sweeper = loop.create_task(self._sweep())

    async def _listen(self, loop: asyncio.AbstractEventLoop, listener: Listener) -> asyncio.Server:
        if listener.kind == "unix":
            claim_unix_path(listener.path)
            server = await loop.create_unix_server(
                lambda: _Conn(self), listener.path, backlog=LISTEN_BACKLOG
            )
            bound = BoundSocket.record(listener.path)
            self._bound.append(bound)
            apply_socketmap_perms(
                bound, socket_mode(self.settings.socket_mode), self.settings.socket_group
            )
        else:
            server = await loop.create_server(
                lambda: _Conn(self),
                listener.host,
                listener.port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
        log.info("socketmap: listening on %s", describe(listener))
        return server

    async def _sweep(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self._conns):
                if conn.started_at and now - conn.started_at > s.request_timeout:
                    log.warning("socketmap %s: request not finished in time, closing", conn.peer)
                    conn.close()
                elif not conn.busy and now - conn.last_activity > s.idle_timeout:
                    conn.close()

    async def close(self) -> None:
        """Stop accepting, let lookups in flight finish (bounded), close connections."""
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while any(c.busy for c in self._conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._conns):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for bound in self._bound:
            bound.remove()  # only the socket this process made, never a successor's
        self._bound.clear()


def describe(listener: Listener) -> str:
    if listener.kind == "unix":
        return f"unix:{listener.path}"
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"inet:{host}:{listener.port}"
