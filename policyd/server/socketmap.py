"""The socketmap listener: Postfix's smtp_tls_policy_maps client talks to this.

Built on ``asyncio.Protocol`` rather than streams: a cached answer is written from inside
``data_received`` with no task, no await and no buffer copy beyond the netstring decoder,
which is what makes the hot path fast. Replies leave in request order; misses are answered
by tasks whose results are written as the head of the per-connection queue completes. The
replies themselves, cached or not, come from :mod:`policyd.server.reply_cache`.

Limits, each named in :class:`~policyd.config.ServerSettings`: request size (PERM and close
beyond it), time to finish a started request (counted from its first byte, so trickling
bytes does not keep a slot), idle time, number of connections (at the limit the
longest-idle connection is closed to admit the new one: a Postfix process that connects
now needs an answer more than one that has said nothing for longest), and a cap on
pipelined requests per connection (reading pauses beyond it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import typing
from collections.abc import Callable
from typing import Final

from policyd.codec import netstring
from policyd.config import Listener, ListenerKind, ServerSettings
from policyd.server.reply_cache import ReplyCache, failed, perm
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
        self._server.admit(self)

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
        ongoing = decoder.buffered > 0  # a request began in an earlier read
        decoder.receive_data(data)
        now = time.monotonic()
        self.last_activity = now
        self._server.touch(self)
        completed = False
        cache = self._server.cache
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
            completed = True
            if not self._pending:
                hit = cache.cached(payload)
                if hit is not None:
                    transport.write(hit)
                    continue
            fut = asyncio.ensure_future(cache.reply_for(payload))
            self._pending.append(fut)
            fut.add_done_callback(self._flush)
            if len(self._pending) >= MAX_PIPELINE and not self._paused:
                self._paused = True
                transport.pause_reading()
        if not decoder.buffered:
            self.started_at = 0.0
        elif completed or not ongoing:
            self.started_at = now  # a new request began in this read
        # else: the same unfinished request; its clock keeps running from its first byte

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
                reply = failed()
            else:
                reply = fut.result()
            transport.write(reply)
        if self._paused and len(pending) < MAX_PIPELINE // 2 and transport is not None:
            self._paused = False
            transport.resume_reading()
        self.last_activity = time.monotonic()
        self._server.touch(self)

    def _fail(self, why: str) -> None:
        """PERM for a protocol error, then close: the stream cannot be resynchronised."""
        log.warning("socketmap %s: bad request: %s", self.peer, why)
        if self._transport is not None:
            self._transport.write(perm(why))
        self.close()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    @property
    def busy(self) -> bool:
        return bool(self._pending)


class SocketmapServer:
    def __init__(
        self,
        service: PolicyService,
        settings: ServerSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.settings = settings
        self.cache = ReplyCache(service, monotonic=monotonic)
        # Insertion order is activity order: touch() moves a connection to the end, so the
        # first one is the longest idle (an O(1) choice at the limit).
        self._conns: dict[_Conn, None] = {}
        self._servers: list[asyncio.Server] = []
        self._bound: list[BoundSocket] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.evicted = 0  # idle connections closed to admit new ones, since start

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def refused(self) -> int:
        """Connections closed at ``max_connections`` (the status field keeps its name;
        new connections are no longer refused)."""
        return self.evicted

    def admit(self, conn: _Conn) -> None:
        """Take a new connection; at ``max_connections`` close the longest-idle one first
        (one with no lookup in flight if there is any), never the newcomer."""
        while len(self._conns) >= self.settings.max_connections:
            victim = next((c for c in self._conns if not c.busy), None)
            if victim is None:
                victim = next(iter(self._conns))
            del self._conns[victim]
            victim.close()
            self.evicted += 1
            if self.evicted % 100 == 1:
                log.warning(
                    "socketmap: %d connections reached, closed the longest-idle %s to admit "
                    "%s (closed so far: %d)",
                    self.settings.max_connections,
                    victim.peer,
                    conn.peer,
                    self.evicted,
                )
        self._conns[conn] = None

    def touch(self, conn: _Conn) -> None:
        """A connection was active: it becomes the last to be evicted."""
        if conn in self._conns:
            del self._conns[conn]
            self._conns[conn] = None

    def forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.settings.socketmap:
            self._servers.append(await self._listen(loop, listener))
        self._sweeper = loop.create_task(self._sweep())

    async def _listen(self, loop: asyncio.AbstractEventLoop, listener: Listener) -> asyncio.Server:
        if listener.kind is ListenerKind.UNIX:
            claim_unix_path(listener.path)
            server = await loop.create_unix_server(
                lambda: _Conn(self), listener.path, backlog=LISTEN_BACKLOG
            )
            bound = BoundSocket.record(listener.path)
            self._bound.append(bound)
            apply_socketmap_perms(bound, self.settings.socket_mode, self.settings.socket_group)
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
    if listener.kind is ListenerKind.UNIX:
        return f"unix:{listener.path}"
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"inet:{host}:{listener.port}"
