"""The socketmap listener: Postfix's smtp_tls_policy_maps client talks to this.

Built on ``asyncio.Protocol`` rather than streams: a cached answer is written from inside
``data_received`` with no task and no await, which is what makes the hot path fast. The
usual read (one whole request, nothing buffered or unanswered before it) skips the netstring
decoder (:func:`policyd.codec.netstring.parse_whole`, as strict), reads no clock (the reply
cache's coarse one) and updates no connection table (activity is a flag, see
:meth:`SocketmapServer.settle`). Replies leave in request order; misses are answered
by tasks, each writing its reply when it is the head of the per-connection queue, and the
replies of the tasks behind it that are done. The
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
from policyd.server.reply_cache import CLOCK_TICK, ReplyCache, failed, perm
from policyd.server.unixsock import BoundSocket, apply_socketmap_perms, claim_unix_path
from policyd.service import PolicyService

log = logging.getLogger("policyd")

MAX_PIPELINE: Final = 64  # unanswered requests per connection before reading pauses
SWEEP_INTERVAL: Final = 1.0  # seconds between idle/request timeout sweeps
DRAIN_TIMEOUT: Final = 5.0  # seconds SIGTERM waits for lookups in flight
LISTEN_BACKLOG: Final = 1024


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_cache",
        "_closed",
        "_decoder",
        "_max_request",
        "_paused",
        "_pending",
        "_server",
        "_transport",
        "_write",
        "active",
        "last_activity",
        "peer",
        "started_at",
    )

    def __init__(self, server: SocketmapServer) -> None:
        self._server = server
        self._cache = server.cache
        self._max_request = server.settings.max_request
        self._decoder = netstring.Decoder(self._max_request)
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], object] = _nowhere
        self._paused = False
        self._closed = False
        self.peer = "-"
        # Activity is a flag the hot path sets; the server turns it into last_activity and
        # the eviction order when it looks (SocketmapServer.settle), not per request.
        self.active = False
        self.last_activity = time.monotonic()
        self.started_at = 0.0  # when the unfinished request began; 0: none

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        self._write = transport.write
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
            self.active = True
            # The usual read: one whole request, nothing before it buffered or unanswered.
            if not (self._pending or self.started_at or self._closed):
                payload = netstring.parse_whole(data, self._max_request)
                if payload is not None:
                    hit = self._cache.cached(payload)
                    if hit is not None:
                        self._write(hit)
                    else:
                        self._ask(payload)
                    return
            self._receive(data)
        except Exception:  # the per-connection catch-all: one bad peer never stops others
            log.exception("socketmap %s: internal error, closing connection", self.peer)
            self.close()

    # -- request handling --------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        """Any read: through the decoder (part of a request, several, or a bad one)."""
        decoder = self._decoder
        ongoing = decoder.buffered > 0  # a request began in an earlier read
        decoder.receive_data(data)
        completed = False
        cache = self._cache
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
                    self._write(hit)
                    continue
            self._ask(payload)
        if not decoder.buffered:
            self.started_at = 0.0
        elif completed or not ongoing:
            self.started_at = time.monotonic()  # a new request began in this read
        # else: the same unfinished request; its clock keeps running from its first byte

    def _ask(self, payload: bytes) -> None:
        """The slow path, or a reply queued behind one: each task writes its reply once it
        is the head of the queue, then those of the tasks behind it that are done (no
        done callback, and no turn of the loop, between an answer and its write)."""
        self._pending.append(asyncio.ensure_future(self._answer(payload)))
        if len(self._pending) >= MAX_PIPELINE and not self._paused:
            self._paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    async def _answer(self, payload: bytes) -> bytes:
        try:
            reply = await self._cache.reply_for(payload)
        except Exception as exc:  # noqa: BLE001 (a bug: the request still gets a reply)
            log.error("socketmap %s: lookup failed: %r", self.peer, exc)
            reply = failed()
        pending = self._pending
        if pending and pending[0] is asyncio.current_task():
            pending.popleft()  # the head: written now, not done yet (see _flush)
            if not self._closed and self._transport is not None:
                self._transport.write(reply)
            self._flush()
        return reply

    def _flush(self) -> None:
        """Write the replies of the tasks done at the head of the queue, in order."""
        pending = self._pending
        transport = self._transport
        while pending and pending[0].done():
            fut = pending.popleft()
            if fut.cancelled() or self._closed or transport is None:
                continue
            transport.write(fut.result())  # _answer turns a failure into a reply
        if self._paused and len(pending) < MAX_PIPELINE // 2 and transport is not None:
            self._paused = False
            transport.resume_reading()
        self.active = True

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


def _nowhere(_data: bytes) -> None:
    """Where a connection writes before it has a transport (never, in practice)."""


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
        self.cache = ReplyCache(service, monotonic=monotonic, prefetch=settings.prefetch)
        # Insertion order is activity order as of the last settle(), which moves connections
        # active since then to the end: the first one is the longest idle.
        self._conns: dict[_Conn, None] = {}
        self._servers: list[asyncio.Server] = []
        self._bound: list[BoundSocket] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
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
        if len(self._conns) >= self.settings.max_connections:
            self.settle()
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

    def settle(self) -> None:
        """Connections active since the last call become the last to be evicted, stamped
        with the time now: the hot path only flags activity (no dict update per request).
        Called by the sweeper every SWEEP_INTERVAL and at max_connections, so the order
        among connections active within one such interval is their earlier order, and idle
        time is measured from the end of the interval the last activity fell in."""
        conns = self._conns
        now = time.monotonic()
        for conn in [c for c in conns if c.active]:
            conn.active = False
            conn.last_activity = now
            del conns[conn]
            conns[conn] = None

    def forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.settings.socketmap:
            self._servers.append(await self._listen(loop, listener))
        self._sweeper = loop.create_task(self._sweep())
        self._ticker = loop.call_later(CLOCK_TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Refresh the reply cache's coarse clock, at least every CLOCK_TICK seconds (more
        often while refreshes start: see ReplyCache.tick). Should a tick fail (the loop's
        exception handler logs it), the next is still scheduled: with the clock stopped,
        cached replies would never expire."""
        wait = CLOCK_TICK
        try:
            wait = self.cache.tick()
        finally:
            self._ticker = loop.call_later(wait, self._tick, loop)

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
            self.settle()
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
        if self._ticker is not None:
            self._ticker.cancel()
        self.cache.close()
        for bound in self._bound:
            bound.remove()  # only the socket this process made, never a successor's
        self._bound.clear()


def describe(listener: Listener) -> str:
    if listener.kind is ListenerKind.UNIX:
        return f"unix:{listener.path}"
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"inet:{host}:{listener.port}"
