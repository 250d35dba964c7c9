"""The STARTTLS probe against real local servers on 127.0.0.1 ephemeral ports.

aiosmtpd speaks SMTP and STARTTLS with test certificates; tiny asyncio servers play the
broken ones (no greeting, refused STARTTLS, a handshake that dies).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import Store

from policyd.adapters.certverify import fingerprints
from policyd.adapters.smtp_probe import MAX_REPLY_LINE, probe_address, probe_host
from policyd.core.evidence import DnsStatus, MxHost, ProbeHost, ProbeVerdict
from policyd.core.reach import Reach
from policyd.settings import ProbeTimeouts
from tests.unit.adapters.test_certverify import DAY, NOW, PrivateKey, make_pki

HOST = "mx.example.test"
LOOPBACK = "127.0.0.1"
FAST = ProbeTimeouts(connect=2.0, banner=2.0, command=2.0, tls=2.0, total=10.0)
LOCAL = Reach.of(("127.0.0.0/8",))  # the servers here listen on loopback


def clock() -> float:
    return NOW.timestamp()


class Handler:
    """aiosmtpd handler: accepts nothing, we never get past QUIT."""


def server_context(
    tmp_path: Path, chain: list[x509.Certificate], key: PrivateKey
) -> ssl.SSLContext:
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@asynccontextmanager
async def aiosmtpd_server(tls: ssl.SSLContext | None) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname=HOST, tls_context=tls, require_starttls=False),
        LOOPBACK,
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A server running ``script`` per connection; yields the port and a connection count."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        await server.wait_closed()


async def until_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mx.example.test ESMTP\r\n")
    await reader.readline()  # EHLO
    writer.write(b"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    await reader.readline()  # STARTTLS


async def probe(port: int, timeouts: ProbeTimeouts = FAST, roots: Store | None = None) -> ProbeHost:
    return await probe_address(
        HOST,
        LOOPBACK,
        port=port,
        roots=roots or PKI.store,
        timeouts=timeouts,
        helo_name="probe.example.test",
        now=clock,
        reach=LOCAL,
    )


async def probe_mx(mx: MxHost, *, port: int = 25, reach: Reach = LOCAL) -> list[ProbeHost]:
    return await probe_host(
        mx,
        port=port,
        roots=PKI.store,
        timeouts=FAST,
        helo_name="probe.example.test",
        now=clock,
        reach=reach,
    )


PKI = make_pki()


async def test_valid_certificate_records_tls_details(tmp_path: Path) -> None:
    leaf, key = PKI.leaf(HOST)
    async with aiosmtpd_server(server_context(tmp_path, [leaf, PKI.inter], key)) as port:
        result = await probe(port)
    assert result.verdict is ProbeVerdict.VALID, result.detail
    assert result.protocol == "TLSv1.3"
    assert result.cipher.startswith("TLS_")
    assert (result.leaf_sha256, result.spki_sha256) == fingerprints(leaf)
    assert result.probed_at == clock()
    assert (result.host, result.address) == (HOST, LOOPBACK)


async def test_expired_certificate(tmp_path: Path) -> None:
    leaf, key = PKI.leaf(HOST, not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    async with aiosmtpd_server(server_context(tmp_path, [leaf, PKI.inter], key)) as port:
        result = await probe_mx(MxHost(HOST, 10, DnsStatus.SECURE, (LOOPBACK,)), port=port)
    assert [r.verdict for r in result] == [ProbeVerdict.EXPIRED]
    assert result[0].leaf_sha256 == fingerprints(leaf)[0]


async def test_wrong_name(tmp_path: Path) -> None:
    leaf, key = PKI.leaf("other.example.test")
    async with aiosmtpd_server(server_context(tmp_path, [leaf, PKI.inter], key)) as port:
        result = await probe(port)
    assert result.verdict is ProbeVerdict.NAME_MISMATCH


async def test_no_starttls_offered() -> None:
    async with aiosmtpd_server(None) as port:
        result = await probe(port)
    assert result.verdict is ProbeVerdict.NO_STARTTLS


async def test_starttls_refused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_starttls(reader, writer)
        writer.write(b"454 4.7.0 TLS not available due to local problem\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        await writer.drain()

    async with scripted_server(script) as (port, _):
        result = await probe(port)
    assert result.verdict is ProbeVerdict.NO_STARTTLS
    assert result.detail.startswith("STARTTLS answered 454")


@pytest.mark.parametrize("answer", [b"", b"\x15\x03\x01\x00\x02\x02\x28garbage"])
async def test_handshake_dies_twice_is_tls_intolerant(answer: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_starttls(reader, writer)
        writer.write(b"220 2.0.0 Ready to start TLS\r\n")
        await writer.drain()
        await reader.read(1)  # the ClientHello begins; answer nonsense and hang up
        writer.write(answer)
        await writer.drain()

    async with scripted_server(script) as (port, connections):
        result = await probe(port)
    assert result.verdict is ProbeVerdict.TLS_INTOLERANT, result.detail
    assert "as at may/encrypt" in result.detail
    assert len(connections) == 2


def tls10_context(tmp_path: Path, ciphers: str) -> ssl.SSLContext:
    """A server stuck on TLS 1.0 with a publicly valid chain (an RSA leaf, as old servers
    have, so RSA key exchange is possible)."""
    leaf, key = PKI.leaf(HOST, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    context = server_context(tmp_path, [leaf, PKI.inter], key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers(ciphers)
    return context


async def test_legacy_signature_server_is_encrypted_never_verified(tmp_path: Path) -> None:
    # TLS 1.0 with ECDHE: the key exchange is signed with SHA-1, which OpenSSL 3 refuses
    # from security level 1. posttls-finger (Postfix 3.7) establishes TLS with such a
    # server at may and encrypt, and at verify fails: "legacy sigalg disallowed". The
    # certificate is valid, yet Postfix can never verify it.
    async with aiosmtpd_server(tls10_context(tmp_path, "ALL:@SECLEVEL=0")) as port:
        result = await probe(port)
    assert result.verdict is ProbeVerdict.LEGACY_TLS, result.detail
    assert result.verdict.encrypted
    assert result.protocol == "TLSv1"
    assert "LEGACY_SIGALG" in result.detail.upper() or "legacy sigalg" in result.detail
    assert "certificate: issued via" in result.detail


async def test_tls10_server_without_signed_key_exchange_verifies(tmp_path: Path) -> None:
    # RSA key exchange signs nothing: Postfix completes TLS 1.0 at verify (posttls-finger
    # agrees), so the certificate decides as usual.
    async with aiosmtpd_server(tls10_context(tmp_path, "AES128-SHA:@SECLEVEL=0")) as port:
        result = await probe(port)
    assert result.verdict is ProbeVerdict.VALID, result.detail
    assert result.protocol == "TLSv1"


async def test_tarpit_without_banner_is_unreachable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # never greets

    timeouts = ProbeTimeouts(connect=1.0, banner=0.2, command=1.0, tls=1.0, total=5.0)
    async with scripted_server(script) as (port, _):
        result = await probe(port, timeouts)
    assert result.verdict is ProbeVerdict.UNREACHABLE
    assert result.detail == "banner: timed out"


async def test_total_bound_wins_over_step_bounds() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    timeouts = ProbeTimeouts(connect=1.0, banner=10.0, command=1.0, tls=1.0, total=0.2)
    async with scripted_server(script) as (port, _):
        result = await probe(port, timeouts)
    assert result.verdict is ProbeVerdict.UNREACHABLE
    assert "longer than 0.2s" in result.detail


async def test_refused_port_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = await probe(port)
    assert result.verdict is ProbeVerdict.UNREACHABLE
    assert result.detail.startswith("connect:")


@pytest.mark.parametrize(
    ("greeting", "detail"),
    [
        (b"554 5.7.1 go away\r\n", "banner 554 5.7.1 go away"),
        (b"HTTP/1.1 400 Bad Request\r\n", "banner: not SMTP"),
        (b"220-" + b"x" * MAX_REPLY_LINE + b"\r\n", "banner: reply line too long"),
        (b"220-hello\r\n" * 100, "banner: reply too long"),
        (b"220-hello\r\n250 mixed\r\n", "banner: mixed reply codes"),
        (b"220 half a line", "banner: connection closed"),
    ],
)
async def test_bad_greeting_is_unreachable(greeting: bytes, detail: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()

    async with scripted_server(script) as (port, _):
        result = await probe(port)
    assert result.verdict is ProbeVerdict.UNREACHABLE
    assert result.detail.startswith(detail), result.detail


async def test_multiline_banner_and_rejected_ehlo() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-mx.example.test ESMTP\r\n220 no UCE\r\n")
        await reader.readline()
        writer.write(b"550 5.7.1 no PTR for your address\r\n")
        await writer.drain()

    async with scripted_server(script) as (port, _):
        result = await probe(port)
    assert result.verdict is ProbeVerdict.UNREACHABLE
    assert result.detail == "EHLO answered 550 5.7.1 no PTR for your address"


async def test_host_without_addresses() -> None:
    mx = MxHost(HOST, 10, DnsStatus.FAILED, address_error="SERVFAIL")
    result = await probe_host(
        mx, roots=PKI.store, timeouts=FAST, helo_name="probe.example.test", now=clock
    )
    assert [(r.verdict, r.detail) for r in result] == [(ProbeVerdict.UNREACHABLE, "SERVFAIL")]


async def test_bad_helo_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="EHLO name"):
        await probe_address(HOST, LOOPBACK, roots=PKI.store, helo_name="a b\r\nRCPT", now=clock)


def test_timeouts_validate() -> None:
    with pytest.raises(ValueError, match="banner"):
        ProbeTimeouts(banner=0)


# -- addresses policyd may not reach (security review L2) --------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.25", "169.254.169.254", "fe80::1",
     "fd00::25", "0.0.0.0", "224.0.0.1"],
)  # fmt: skip
async def test_a_non_global_address_is_refused_without_a_connection(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialled: list[str] = []

    async def open_connection(host: str, *args: object, **kwargs: object) -> None:
        dialled.append(host)
        raise AssertionError("no connection may be attempted")

    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    result = await probe_mx(MxHost(HOST, 10, DnsStatus.SECURE, (address,)), reach=Reach())
    assert dialled == []
    assert [r.verdict for r in result] == [ProbeVerdict.UNREACHABLE]
    assert result[0].detail.startswith(f"address not allowed: {address} is ")
    assert "[outbound] allow_networks" in result[0].detail


async def test_an_allowed_network_is_probed(tmp_path: Path) -> None:
    leaf, key = PKI.leaf(HOST)
    async with aiosmtpd_server(server_context(tmp_path, [leaf, PKI.inter], key)) as port:
        mx = MxHost(HOST, 10, DnsStatus.SECURE, (LOOPBACK, "10.0.0.25"))
        result = await probe_mx(mx, port=port, reach=LOCAL)
    assert [r.verdict for r in result] == [ProbeVerdict.VALID, ProbeVerdict.UNREACHABLE]
    assert result[1].detail.startswith("address not allowed: 10.0.0.25 is private")
