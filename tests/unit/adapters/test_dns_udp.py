"""policyd.adapters.dns_udp and the Resolver's UDP path against a small DNS server on
127.0.0.1 in this process (no packet leaves the host)."""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from policyd.adapters import dns as dns_adapter
from policyd.adapters import dns_udp
from policyd.adapters.dns import HealthTimes, MxRecord, Rcode, Resolver
from policyd.codec import dns_wire
from policyd.core.evidence import DnsStatus, Tlsa
from policyd.core.names import domain_name
from policyd.settings import DnsSettings

Handler = Callable[[dns.message.Message], bytes | None]


def answer(query: dns.message.Message, *lines: str, rcode: int = 0, ad: bool = True) -> bytes:
    msg = dns.message.make_response(query)
    if ad:
        msg.flags |= dns.flags.AD
    msg.set_rcode(dns.rcode.Rcode.make(rcode))
    for line in lines:
        name, ttl, _, rdtype, rdata = line.split(None, 4)
        msg.find_rrset(
            msg.answer,
            dns.name.from_text(name),
            dns.rdataclass.IN,
            dns.rdatatype.from_text(rdtype),
            create=True,
        ).add(dns.rdata.from_text("IN", rdtype, rdata), int(ttl))
    wire: bytes = msg.to_wire()
    return wire


@dataclass
class Server(asyncio.DatagramProtocol):
    handler: Handler
    transport: asyncio.DatagramTransport | None = None
    asked: list[str] = field(default_factory=list)
    # Queries the handler left unanswered, with where they came from (to answer late).
    unanswered: list[tuple[dns.message.Message, tuple[str | object, ...]]] = field(
        default_factory=list
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        query = dns.message.from_wire(data)
        self.asked.append(query.question[0].name.to_text())
        reply = self.handler(query)
        if reply is None:
            self.unanswered.append((query, addr))
        elif self.transport is not None:
            self.transport.sendto(reply, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], asyncio.Future[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        loop = asyncio.get_running_loop()
        _, server = await loop.create_datagram_endpoint(
            lambda: Server(handler), local_addr=("127.0.0.1", 0)
        )
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for s in servers:
        assert s.transport is not None
        s.transport.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_query_gets_its_response(serve: Callable[[Handler], asyncio.Future[Server]]) -> None:
    server = await serve(lambda q: answer(q, "a.test. 60 IN A 192.0.2.1"))
    client = dns_udp.UdpResolver("127.0.0.1", server.port, 1232)
    r = await client.query("a.test", dns_wire.TYPE_A, 1.0)
    assert [rr.data for rr in r.answer] == ["192.0.2.1"]
    client.close()


async def test_response_for_another_question_is_ignored(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    def spoof(q: dns.message.Message) -> bytes:
        other = dns.message.make_query("evil.test.", "A")
        other.id = q.id  # the right ID, the wrong question (RFC 5452 9.1)
        return answer(other, "evil.test. 60 IN A 203.0.113.1")

    server = await serve(spoof)
    client = dns_udp.UdpResolver("127.0.0.1", server.port, 1232)
    with pytest.raises(dns_udp.NoResponse):
        await client.query("a.test", dns_wire.TYPE_A, 0.2)
    client.close()


async def test_closed_port_is_an_os_error() -> None:
    client = dns_udp.UdpResolver("127.0.0.1", closed_port(), 1232)
    with pytest.raises((OSError, dns_udp.NoResponse)):
        await client.query("a.test", dns_wire.TYPE_A, 0.5)
    client.close()


async def test_many_queries_in_flight_on_few_sockets(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    client = dns_udp.UdpResolver("127.0.0.1", server.port, 1232)
    got = await asyncio.gather(
        *(client.query(f"n{i}.test", dns_wire.TYPE_A, 2.0) for i in range(300))
    )
    assert [r.qname for r in got] == [f"n{i}.test" for i in range(300)]
    assert len(client._sockets) <= dns_udp.SOCKETS
    client.close()


def resolver(port: int, lifetime: float = 2.0) -> Resolver:
    settings = DnsSettings(
        nameservers=("127.0.0.1",),
        port=port,
        timeout=min(1.0, lifetime),
        lifetime=lifetime,
    )
    return Resolver(settings, health=HealthTimes(0.2, 0.2, 0.2))


async def test_resolver_uses_the_udp_path(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, "example.test. 300 IN MX 10 mx.example.test."))
    r = resolver(server.port)
    got = await r.query("Example.Test", "MX")
    assert got.status is DnsStatus.SECURE and got.rcode is Rcode.NOERROR
    (mx,) = got.records
    assert mx == MxRecord(10, domain_name("mx.example.test"))
    assert got.ttl == 300
    assert r._fast  # the UDP path, not dnspython's resolver
    r.close()


async def test_resolver_reports_bogus_from_the_ede(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    def bogus(q: dns.message.Message) -> bytes:
        msg = dns.message.make_response(q)
        msg.set_rcode(dns.rcode.SERVFAIL)
        msg.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS)])
        wire: bytes = msg.to_wire()
        return wire

    server = await serve(bogus)
    r = resolver(server.port)
    got = await r.query("bogus.test", "MX")
    assert got.failed and got.rcode is Rcode.SERVFAIL
    assert got.error.startswith("bogus (EDE 6")
    assert not r.down  # the resolver answered: no outage
    r.close()


async def test_resolver_nxdomain_and_insecure(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, rcode=dns.rcode.NXDOMAIN, ad=False))
    r = resolver(server.port)
    got = await r.query("gone.test", "A")
    assert got.nxdomain and got.status is DnsStatus.INSECURE
    r.close()


async def test_silent_resolver_opens_the_breaker_over_udp(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: None)  # never answers
    r = resolver(server.port, lifetime=5.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await r.query("a.test", "A")
    assert got.failed and r.down
    assert loop.time() - t0 < 1.5  # after (0.2 s) + health timeout (0.2 s), not 5 s
    r.close()


async def test_udp_path_types_txt_mx_and_tlsa_records(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    lines = {
        "TXT": ('x.test. 300 IN TXT "v=STSv1; " "id=abc"', 'x.test. 300 IN TXT "id=\\255"'),
        "MX": ("x.test. 300 IN MX 10 MX.X.Test.", "x.test. 300 IN MX 0 ."),
        "TLSA": ("x.test. 300 IN TLSA 3 1 1 " + "ab" * 32,),
    }

    def handler(q: dns.message.Message) -> bytes:
        return answer(q, *lines[dns.rdatatype.to_text(q.question[0].rdtype)])

    server = await serve(handler)
    r = resolver(server.port)
    txt = await r.query("x.test", "TXT")
    assert sorted(txt.texts) == ["id=\ufffd", "v=STSv1; id=abc"]
    mx = await r.query("x.test", "MX")
    assert sorted(mx.mx, key=lambda m: m.preference) == [
        MxRecord(0, None),
        MxRecord(10, domain_name("mx.x.test")),
    ]
    tlsa = await r.query("x.test", "TLSA")
    assert tlsa.tlsa == (Tlsa(3, 1, 1, bytes.fromhex("ab" * 32)),)
    assert r._fast  # the UDP path, not dnspython's resolver
    r.close()


# -- the lookups without a task (Resolver._fast_start) -----------------------------------


async def warmed(server: Server, lifetime: float = 2.0) -> Resolver:
    """A resolver whose sockets are open: its next lookups take the path without a task."""
    r = resolver(server.port, lifetime)
    await asyncio.gather(*(r.query(f"warm{i}.test", "A") for i in range(dns_udp.SOCKETS)))
    assert r._fast is not None and len(r._fast[0]._sockets) == dns_udp.SOCKETS
    return r


async def test_a_lookup_without_a_task_is_answered_and_cached(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 300 IN A 192.0.2.7"))
    r = await warmed(server)
    pending = asyncio.ensure_future(r.query("a.test", "A"))
    await asyncio.sleep(0)
    assert len(r._fast_lookups) == 1  # under way without a task
    got = await pending
    assert got.texts == ("192.0.2.7",) and got.secure
    assert not r._fast_lookups and not r._asking
    asked = len(server.asked)
    assert (await r.query("a.test", "A")) == got  # from the cache
    assert len(server.asked) == asked
    r.close()


async def test_a_caller_leaving_a_lookup_without_a_task_spares_it(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.8"))
    r = await warmed(server)
    server.handler = lambda q: None  # held: answered below
    first = asyncio.ensure_future(r.query("b.test", "A"))
    second = asyncio.ensure_future(r.query("b.test", "A"))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0)
    ((query, addr),) = server.unanswered  # one query for both callers
    assert server.transport is not None
    server.transport.sendto(answer(query, "b.test. 60 IN A 192.0.2.8"), addr)
    assert (await second).texts == ("192.0.2.8",)
    assert first.cancelled()
    r.close()


async def test_a_lookup_without_a_task_hands_over_to_one_when_unanswered(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    """No response to the first try: a task tries again within what is left of the
    lifetime, and its answer reaches the caller."""
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    r = await warmed(server, lifetime=3.0)
    tries = 0

    def second_try(q: dns.message.Message) -> bytes | None:
        nonlocal tries
        if q.question[0].name.to_text() != "c.test.":
            return answer(q)  # the breaker's health check: the resolver is alive
        tries += 1
        return None if tries == 1 else answer(q, "c.test. 60 IN A 192.0.2.9")

    server.handler = second_try
    got = await r.query("c.test", "A")  # per try 1 s: answered on the second
    assert got.texts == ("192.0.2.9",) and tries == 2
    assert not r._fast_lookups and not r._asking and not r.down
    r.close()


async def test_a_refusal_on_the_path_without_a_task_fails_as_on_the_other(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    r = await warmed(server)
    server.handler = lambda q: answer(q, rcode=dns.rcode.REFUSED)
    got = await r.query("d.test", "A")
    assert got.failed and got.rcode is Rcode.REFUSED and got.error == "REFUSED"
    r.close()


async def test_the_breaker_ends_lookups_without_a_task(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    r = await warmed(server, lifetime=5.0)
    server.handler = lambda q: None  # the resolver goes silent, health check included
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await asyncio.gather(*(r.query(f"e{i}.test", "A") for i in range(3)))
    assert all(a.failed for a in got) and r.down
    assert loop.time() - t0 < 1.5  # after (0.2 s) + health timeout (0.2 s), not 5 s
    assert not r._fast_lookups and not r._asking
    r.close()


async def test_a_response_after_the_breaker_ended_the_lookup_is_ignored(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    """The query's sink is the lookup itself: once the breaker has ended it, a response
    that still comes is dropped by the socket, not delivered again."""
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    r = await warmed(server)
    server.handler = lambda q: None  # this query stays unanswered
    lookup = asyncio.ensure_future(r.query("late.test", "A"))
    await asyncio.sleep(0.05)  # sent
    assert r._fast is not None
    sock = next(s for s in r._fast[0]._sockets if s.pending)
    qid, (sink, *_) = next(iter(sock.pending.items()))
    r._fast_stop("ended by the breaker")
    got = await lookup
    assert got.failed and got.error == "ended by the breaker"
    assert sink.done()
    query = dns.message.make_query("late.test", "A")
    query.id = qid
    sock.datagram_received(answer(query, "late.test. 60 IN A 192.0.2.9"), ("127.0.0.1", 53))
    assert qid not in sock.pending and not r._fast_lookups and not r._asking
    assert r.cached == dns_udp.SOCKETS  # the warm-up's answers only: the late one is not kept
    r.close()


async def test_a_bug_in_the_callback_reaches_the_caller(
    serve: Callable[[Handler], asyncio.Future[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    r = await warmed(server)

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(dns_adapter, "from_wire", broken)
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(r.query("f.test", "A"), 2.0)  # not left waiting
    assert not r._fast_lookups
    r.close()


class RecordingTransport:
    """A socket's transport that notes each datagram before sending it."""

    def __init__(self, real: asyncio.DatagramTransport) -> None:
        self.real = real
        self.sent: list[bytes] = []

    def sendto(self, data: bytes) -> None:
        self.sent.append(data)
        self.real.sendto(data)

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def close(self) -> None:
        self.real.close()


async def test_queries_of_one_turn_go_out_together(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    """Queries asked in one turn of the loop are sent at its next turn, back to back (the
    resolver, woken by the first, reads the others without another wake-up)."""
    server = await serve(lambda q: answer(q, f"{q.question[0].name} 60 IN A 192.0.2.9"))
    client = dns_udp.UdpResolver("127.0.0.1", server.port, 1232)
    await asyncio.gather(*(client.query(f"w{i}.test", dns_wire.TYPE_A, 1.0) for i in range(8)))
    recorders = [
        RecordingTransport(typing.cast(asyncio.DatagramTransport, s.transport))
        for s in client._sockets
    ]
    for sock, recorder in zip(client._sockets, recorders, strict=True):
        sock.transport = typing.cast(asyncio.DatagramTransport, recorder)
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[dns_wire.Response]] = [loop.create_future() for _ in range(3)]
    for i, future in enumerate(futures):
        assert client.send(f"q{i}.test", dns_wire.TYPE_A, 1.0, future)
    assert sum(len(r.sent) for r in recorders) == 0  # asked, not sent yet
    await asyncio.sleep(0)
    assert sum(len(r.sent) for r in recorders) == 3
    got = await asyncio.gather(*futures)
    assert [r.qname for r in got] == ["q0.test", "q1.test", "q2.test"]
    client.close()


async def test_a_query_whose_socket_closed_before_sending_fails(
    serve: Callable[[Handler], asyncio.Future[Server]],
) -> None:
    server = await serve(lambda q: answer(q, "a.test. 60 IN A 192.0.2.1"))
    client = dns_udp.UdpResolver("127.0.0.1", server.port, 1232)
    await asyncio.gather(*(client.query(f"w{i}.test", dns_wire.TYPE_A, 1.0) for i in range(8)))
    future: asyncio.Future[dns_wire.Response] = asyncio.get_running_loop().create_future()
    assert client.send("a.test", dns_wire.TYPE_A, 1.0, future)
    for sock in client._sockets:
        assert sock.transport is not None
        sock.transport.close()
    with pytest.raises(ConnectionError):
        await future
    client.close()
