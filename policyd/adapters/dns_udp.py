"""Queries to the local validating resolver over a few long-lived UDP sockets.

dnspython's async resolver opens a socket per query and runs its general resolution
machinery; on the cold path (every lookup a new destination, five queries each) that was
most of policyd's CPU (issue 14). Here a handful of connected UDP sockets stay open, each
query gets a random ID, and a response counts only if its ID and question match a query in
flight (RFC 5452 9.1). The resolver is local (policyd trusts its AD bit only on this host),
so the fixed source ports of long-lived sockets give an attacker nothing a spoofer on the
loopback path would not already have; each socket is replaced after ``MAX_QUERIES_PER_SOCKET``
queries anyway.

:meth:`UdpResolver.query` returns a decoded response or raises :class:`NoResponse`
(nothing usable arrived in time) or ``OSError`` (refused, unreachable).
"""

from __future__ import annotations

import asyncio
import os
import random
import typing
from typing import Final

from policyd.codec.dns_wire import DnsWireError, Response, decode_response, encode_query

SOCKETS: Final = 4  # per nameserver: spreads queries over a few source ports
MAX_QUERIES_PER_SOCKET: Final = 50_000  # then the socket (and its port) is replaced
MAX_INFLIGHT: Final = 4096  # per socket: the 16-bit ID space stays sparse


class NoResponse(Exception):
    """No matching response within the timeout."""


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[Response], str, int]] = {}
        self.sent = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.DatagramTransport without subclassing it.
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) < 2:
            return
        entry = self.pending.get(int.from_bytes(data[:2], "big"))
        if entry is None:
            return  # late, or not ours
        future, qname, qtype = entry
        try:
            response = decode_response(data)
        except DnsWireError as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if response.qname != qname or response.qtype != qtype:
            return  # ID matched, question did not: ignore it (RFC 5452 9.1)
        if not future.done():
            future.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable on a connected socket: every query on it went nowhere.
        for future, _, _ in list(self.pending.values()):
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future, _, _ in list(self.pending.values()):
            if not future.done():
                future.set_exception(exc or ConnectionError("socket closed"))


def _expire(future: asyncio.Future[Response]) -> None:
    if not future.done():
        future.set_exception(NoResponse("timeout"))


class UdpResolver:
    """One nameserver address and port; sockets opened on first use."""

    def __init__(self, address: str, port: int, payload: int) -> None:
        self._address = address
        self._port = port
        self._payload = payload
        self._sockets: list[_Socket] = []
        self._opening = asyncio.Lock()
        self._next = 0
        # Query IDs: unpredictable from outside (seeded by the OS), without a system call
        # per query as secrets would make.
        self._ids = random.Random(os.urandom(16))

    async def _socket(self) -> _Socket:
        if len(self._sockets) == SOCKETS:
            self._next = (self._next + 1) % SOCKETS
            sock = self._sockets[self._next]
            if not sock.closed and sock.sent < MAX_QUERIES_PER_SOCKET:
                return sock
        live: list[_Socket] = []
        for sock in self._sockets:
            if sock.closed:
                continue
            if sock.sent >= MAX_QUERIES_PER_SOCKET:
                if not sock.pending and sock.transport is not None:
                    sock.transport.close()  # else closed when its last query ends
                continue
            live.append(sock)
        self._sockets = live
        if len(self._sockets) < SOCKETS:
            async with self._opening:  # concurrent first queries open SOCKETS, not more
                if len(self._sockets) < SOCKETS:
                    loop = asyncio.get_running_loop()
                    _, protocol = await loop.create_datagram_endpoint(
                        _Socket, remote_addr=(self._address, self._port)
                    )
                    self._sockets.append(protocol)
                    return protocol
        self._next = (self._next + 1) % len(self._sockets)
        return self._sockets[self._next]

    async def query(self, qname: str, qtype: int, timeout: float) -> Response:
        """Send one query and wait for its response; ``qname`` lower case, no final dot."""
        sock = await self._socket()
        if len(sock.pending) >= MAX_INFLIGHT:
            raise NoResponse("too many queries in flight")
        qid = self._ids.getrandbits(16)
        while qid in sock.pending:
            qid = self._ids.getrandbits(16)
        wire = encode_query(qid, qname, qtype, self._payload)  # DnsWireError: not sendable
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        sock.pending[qid] = (future, qname, qtype)
        sock.sent += 1
        timer = loop.call_later(timeout, _expire, future)
        try:
            assert sock.transport is not None
            sock.transport.sendto(wire)
            return await future
        finally:
            timer.cancel()
            del sock.pending[qid]
            if sock.sent >= MAX_QUERIES_PER_SOCKET and not sock.pending and sock.transport:
                sock.transport.close()

    def close(self) -> None:
        for sock in self._sockets:
            if sock.transport is not None:
                sock.transport.close()
        self._sockets = []
