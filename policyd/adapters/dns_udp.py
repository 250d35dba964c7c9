"""Queries to the local validating resolver over a few long-lived UDP sockets.

dnspython's async resolver opens a socket per query and runs its general resolution
machinery; on the cold path (every lookup a new destination, five queries each) that was
most of policyd's CPU (issue 14). Here a handful of connected UDP sockets stay open, each
query gets a random ID, and a response counts only if its ID and question match a query in
flight (RFC 5452 9.1). The resolver is local (policyd trusts its AD bit only on this host),
so the fixed source ports of long-lived sockets give an attacker nothing a spoofer on the
loopback path would not already have; each socket is replaced after ``MAX_QUERIES_PER_SOCKET``
queries anyway. The queries asked in one turn of the event loop go out together at the
next (``UdpResolver._flush``).

:meth:`UdpResolver.query` returns a decoded response or raises :class:`NoResponse`
(nothing usable arrived in time) or ``OSError`` (refused, unreachable, the socket closed
before the query went out).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import typing
from typing import Final

from policyd.adapters.dns_answer import (
    DnsAnswer,
    Rcode,
    describe,
    describe_wire,
    failed,
    from_wire,
)
from policyd.codec.dns_wire import DnsWireError, Response, decode_response, encode_query

SOCKETS: Final = 4  # per nameserver: spreads queries over a few source ports
MAX_QUERIES_PER_SOCKET: Final = 50_000  # then the socket (and its port) is replaced
MAX_INFLIGHT: Final = 4096  # per socket: the 16-bit ID space stays sparse


class NoResponse(Exception):
    """No matching response within the timeout."""


class Sink(typing.Protocol):
    """Where a query's outcome goes: an asyncio future, or an object that takes it at
    once, in the socket's own callback (:meth:`UdpResolver.send`)."""

    def done(self) -> bool: ...

    def set_result(self, result: Response, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


# A timer may fire this early (event loops round delays to milliseconds), seconds.
TIMER_SLACK: Final = 0.002


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # query ID -> (where its outcome goes, name, type, deadline in loop time)
        self.pending: dict[int, tuple[Sink, str, int, float]] = {}
        self.sent = 0
        self.closed = False
        # One timer per socket, due at the earliest deadline: a timer per query cost
        # more than the query's own work on the cold path.
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf

    def watch(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Make sure the timer fires by ``deadline``."""
        if deadline < self._due:
            if self._timer is not None:
                self._timer.cancel()
            self._due = deadline
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._due = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time() + TIMER_SLACK
        later = math.inf
        over = []
        for qid, (future, _, _, deadline) in self.pending.items():
            if deadline <= now:
                over.append(qid)
                if not future.done():
                    future.set_exception(NoResponse("timeout"))
            elif deadline < later:
                later = deadline
        for qid in over:
            self.release(qid)
        if later < math.inf:
            self.watch(loop, later)

    def release(self, qid: int) -> None:
        """The query ``qid`` is over (answered, timed out, or its deadline passed after its
        caller gave up): its ID is free again. Removed here by whoever ends it, not by a
        done callback per query; an abandoned query keeps its ID until its deadline."""
        del self.pending[qid]
        if self.sent >= MAX_QUERIES_PER_SOCKET and not self.pending and self.transport:
            self.transport.close()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._due = math.inf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.DatagramTransport without subclassing it.
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) < 2:
            return
        qid = int.from_bytes(data[:2], "big")
        entry = self.pending.get(qid)
        if entry is None:
            return  # late, or not ours
        future, qname, qtype, _ = entry
        try:
            response = decode_response(data)
        except DnsWireError as exc:
            self.release(qid)
            if not future.done():
                future.set_exception(exc)
            return
        if response.qname != qname or response.qtype != qtype:
            return  # ID matched, question did not: ignore it (RFC 5452 9.1)
        self.release(qid)
        if not future.done():
            future.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable on a connected socket: every query on it went nowhere.
        self._fail_all(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_timer()
        self._fail_all(exc or ConnectionError("socket closed"))

    def _fail_all(self, exc: Exception) -> None:
        """End every query in flight on this socket with ``exc``; their IDs are free."""
        pending = list(self.pending.values())
        self.pending.clear()
        for future, *_ in pending:
            if not future.done():
                future.set_exception(exc)


class UdpResolver:
    """One nameserver address and port; sockets opened on first use."""

    def __init__(self, address: str, port: int, payload: int) -> None:
        self._address = address
        self._port = port
        self._payload = payload
        self._sockets: list[_Socket] = []
        self._opening = asyncio.Lock()
        self._next = 0
        # Queries to send at the loop's next turn, all at once (see _flush).
        self._outbox: list[tuple[_Socket, int, Sink, bytes]] = []
        # Query IDs: unpredictable from outside (seeded by the OS), without a system call
        # per query as secrets would make.
        self._ids = random.Random(os.urandom(16))

    def _ready_socket(self) -> _Socket | None:
        """The next socket in turn if all are open and usable (no await: the usual case)."""
        if len(self._sockets) == SOCKETS:
            self._next = (self._next + 1) % SOCKETS
            sock = self._sockets[self._next]
            if not sock.closed and sock.sent < MAX_QUERIES_PER_SOCKET:
                return sock
        return None

    async def _socket(self) -> _Socket:
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
        sock = self._ready_socket() or await self._socket()
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._send(sock, qname, qtype, timeout, future)
        return await future

    def send(self, qname: str, qtype: int, timeout: float, sink: Sink) -> bool:
        """:meth:`query` without a future, for work that callbacks drive: ``sink`` takes
        the response or the failure as soon as it is known, from the socket's callback
        (once done, it takes nothing more). False while no socket is open (:meth:`query`
        opens them). Raises :class:`~policyd.codec.dns_wire.DnsWireError` (a name it
        cannot send) or :class:`NoResponse` (too many in flight); a failure to send
        reaches the sink."""
        sock = self._ready_socket()
        if sock is None:
            return False
        self._send(sock, qname, qtype, timeout, sink)
        return True

    def _send(self, sock: _Socket, qname: str, qtype: int, timeout: float, sink: Sink) -> None:
        if len(sock.pending) >= MAX_INFLIGHT:
            raise NoResponse("too many queries in flight")
        qid = self._ids.getrandbits(16)
        while qid in sock.pending:
            qid = self._ids.getrandbits(16)
        wire = encode_query(qid, qname, qtype, self._payload)  # DnsWireError: not sendable
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sock.pending[qid] = (sink, qname, qtype, deadline)
        sock.sent += 1
        sock.watch(loop, deadline)
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((sock, qid, sink, wire))

    def _flush(self) -> None:
        """Send the queries of a turn of the loop back to back: the resolver, woken by the
        first, reads the others without another wake-up (a system call that wakes another
        process was most of a query's cost on the cold path)."""
        outbox, self._outbox = self._outbox, []
        for sock, qid, future, wire in outbox:
            entry = sock.pending.get(qid)
            if entry is None or entry[0] is not future:
                continue  # ended meanwhile (the socket failed), its ID perhaps reused
            try:
                if sock.transport is None or sock.transport.is_closing():
                    raise ConnectionError("socket closed")
                sock.transport.sendto(wire)
            except Exception as exc:  # noqa: BLE001 (reaches the query's caller)
                sock.release(qid)
                if not future.done():
                    future.set_exception(exc)

    def close(self) -> None:
        for sock in self._sockets:
            sock.stop_timer()
            if sock.transport is not None:
                sock.transport.close()
        self._sockets = []


async def resolve(
    clients: list[UdpResolver],
    name: str,
    rdtype: str,
    qtype: int,
    *,
    per_try: float,
    lifetime: float,
) -> tuple[DnsAnswer, bool] | None:
    """One lookup, with dnspython's semantics (a try per server until ``lifetime`` ends;
    SERVFAIL final; REFUSED and the like move on to the next server; an unreachable server
    is dropped for this lookup), and whether any server responded. ``clients`` is this
    lookup's own list. None: a name or a response this path does not handle (dnspython's
    turn: a truncated response, a name it cannot send)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    errors: list[str] = []
    rcode: Rcode | None = None
    responded = False
    while clients:
        for client in list(clients):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                response = await client.query(name, qtype, min(per_try, left))
            except DnsWireError as exc:
                if not responded and not errors:
                    return None  # a name this path cannot send: dnspython's turn
                responded = True
                errors.append(f"FormError: {exc}")
                clients.remove(client)
                continue
            except NoResponse:
                errors.append("timeout")
                continue
            except OSError as exc:
                errors.append(describe(exc, None))
                clients.remove(client)
                continue
            responded = True
            if response.truncated:
                return None  # dnspython retries over TCP
            answer = from_wire(name, rdtype, qtype, response)
            if answer is not None:
                return answer, True
            code = Rcode.of(response.rcode)
            text = code.value if code is not None else f"RCODE{response.rcode}"
            errors.append(describe_wire(text, response.ede))
            rcode = rcode or code
            clients.remove(client)
        if loop.time() >= deadline:
            break
    if errors and all(e == "timeout" for e in errors):
        return failed(name, rdtype, "timeout"), responded
    unique = list(dict.fromkeys(e for e in errors if e != "timeout")) or ["timeout"]
    return failed(name, rdtype, "; ".join(unique), rcode), responded
