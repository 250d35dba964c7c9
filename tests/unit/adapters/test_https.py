"""policyd.adapters.https against a real local HTTPS server with a throwaway CA."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from policyd.adapters.https import (
    FIRST_REQUEST_MODULES,
    MAX_POLICY_BYTES,
    FetchError,
    PolicyFetcher,
    fetch_policy,
)
from policyd.core.reach import Reach
from policyd.settings import HttpsTimeouts
from tests.pki import Ca

DOMAIN = "example.test"
HOST = "mta-sts.example.test"
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
FAST = HttpsTimeouts(connect=2.0, read=2.0, total=3.0)
LOCAL = Reach.of(("127.0.0.0/8",))  # the servers here listen on loopback


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    trusted, rogue = Ca("policyd test CA"), Ca("rogue CA")
    files: dict[str, Path] = {}
    (root / "ca.pem").write_bytes(trusted.pem)
    files["ca"] = root / "ca.pem"
    for label, ca, name in (
        ("good", trusted, HOST),
        ("wrong-name", trusted, "mta-sts.other.test"),
        ("untrusted", rogue, HOST),
    ):
        issued = ca.issue(name)
        (root / f"{label}.pem").write_bytes(issued.cert_pem + issued.key_pem)
        files[label] = root / f"{label}.pem"
    return files


# -- a canned HTTPS server ---------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    handler: Handler | None = None


def response(
    status: str = "200 OK",
    body: bytes = POLICY,
    content_type: str | None = "text/plain",
    **extra: str,
) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    head += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def canned(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return handler


async def serve(cert: Path, server: Server) -> asyncio.Server:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert)

    def remember_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        server.sni.append(name)

    ctx.sni_callback = remember_sni

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            server.requests.append(request)
            assert server.handler is not None
            await server.handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ctx)
    server.port = srv.sockets[0].getsockname()[1]
    return srv


@pytest.fixture
async def good(pki: dict[str, Path]) -> AsyncIterator[Server]:
    server = Server()
    srv = await serve(pki["good"], server)
    yield server
    srv.close()


def fetcher(pki: dict[str, Path], server: Server, timeouts: HttpsTimeouts = FAST) -> PolicyFetcher:
    return PolicyFetcher(
        str(pki["ca"]),
        timeouts,
        port=server.port,
        address_override=lambda _host: "127.0.0.1",
        reach=LOCAL,
    )


async def reason(pki: dict[str, Path], server: Server, timeouts: HttpsTimeouts = FAST) -> str:
    async with fetcher(pki, server, timeouts) as f:
        with pytest.raises(FetchError) as info:
            await f.fetch(DOMAIN)
    assert info.value.domain == DOMAIN
    return info.value.reason


# -- tests -------------------------------------------------------------------------------


async def test_fetch_200_text_plain(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response())
    async with fetcher(pki, good) as f:
        assert await f.fetch(DOMAIN) == POLICY
        assert await f.fetch("EXAMPLE.test.") == POLICY  # one context, client reused
    request = good.requests[0].decode()
    assert request.startswith("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
    assert f"host: {HOST}:{good.port}\r\n" in request.lower()
    assert "accept-encoding: identity\r\n" in request.lower()
    assert good.sni == [HOST, HOST]


async def test_content_type_parameters_allowed(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(content_type="Text/Plain; charset=utf-8"))
    async with fetcher(pki, good) as f:
        assert await f.fetch(DOMAIN) == POLICY


async def test_http_404(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response("404 Not Found", b"nope"))
    assert await reason(pki, good) == "HTTP 404"


async def test_redirect_not_followed(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response("301 Moved", b"", Location=f"https://{HOST}/elsewhere"))
    assert await reason(pki, good) == "redirect not followed (HTTP 301)"
    assert len(good.requests) == 1


async def test_content_type_html(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(content_type="text/html; charset=utf-8"))
    assert await reason(pki, good) == "Content-Type text/html"


async def test_content_type_missing(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(content_type=None))
    assert await reason(pki, good) == "Content-Type (none)"


async def test_compressed_body_refused(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(Content_Encoding="gzip"))
    assert await reason(pki, good) == "Content-Encoding gzip not accepted"


async def test_body_over_cap_with_length(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(body=b"x" * (70 * 1024)))
    assert await reason(pki, good) == f"body over {MAX_POLICY_BYTES} bytes"


async def test_body_over_cap_streamed(pki: dict[str, Path], good: Server) -> None:
    """No Content-Length: the reader stops past the cap instead of reading on."""
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        while sent < 10 * 1024 * 1024:
            writer.write(b"x" * 4096)
            sent += 4096
            await writer.drain()

    good.handler = endless
    assert await reason(pki, good) == f"body over {MAX_POLICY_BYTES} bytes"
    assert sent < 10 * 1024 * 1024


async def test_exactly_cap_is_fine(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response(body=b"x" * MAX_POLICY_BYTES))
    async with fetcher(pki, good) as f:
        assert len(await f.fetch(DOMAIN)) == MAX_POLICY_BYTES


async def test_slow_server_total_deadline(pki: dict[str, Path], good: Server) -> None:
    """Bytes trickle in under the read timeout; the total deadline still ends it."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    good.handler = trickle
    started = time.monotonic()
    got = await reason(pki, good, HttpsTimeouts(connect=2.0, read=1.0, total=0.3))
    assert got == "timeout"
    assert time.monotonic() - started < 2.0


async def test_silent_server_read_timeout(pki: dict[str, Path], good: Server) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    good.handler = silent
    started = time.monotonic()
    assert await reason(pki, good, HttpsTimeouts(connect=2.0, read=0.2, total=5.0)) == "timeout"
    assert time.monotonic() - started < 2.0


async def refused_certificate(pki: dict[str, Path], cert: str) -> str:
    """Why a fetch from a server presenting ``pki[cert]`` failed; it asked nothing."""
    server = Server(handler=canned(response()))
    srv = await serve(pki[cert], server)
    try:
        got = await reason(pki, server)
    finally:
        srv.close()
    assert got.startswith("certificate verify failed: ")
    assert server.requests == []
    return got


async def test_untrusted_certificate(pki: dict[str, Path]) -> None:
    assert "issuer" in await refused_certificate(pki, "untrusted")


async def test_wrong_name(pki: dict[str, Path]) -> None:
    assert "mismatch" in (await refused_certificate(pki, "wrong-name")).lower()


async def test_connection_refused(pki: dict[str, Path]) -> None:
    server = Server()
    srv = await serve(pki["good"], server)
    srv.close()
    await srv.wait_closed()
    assert (await reason(pki, server)).startswith("connect failed")


async def test_garbage_response(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(b"this is not HTTP\r\n\r\n")
    got = await reason(pki, good)
    assert got and got != "timeout"


@pytest.mark.parametrize(
    "domain", ["", "bad domain", "-x.example", "ex ample.test", "a..b", "ä.test"]
)
async def test_invalid_domain(pki: dict[str, Path], good: Server, domain: str) -> None:
    async with fetcher(pki, good) as f:
        with pytest.raises(FetchError, match="invalid domain name"):
            await f.fetch(domain)
    assert good.requests == []


def test_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load CA file"):
        PolicyFetcher(str(tmp_path / "missing.pem"))


def test_timeouts_validate() -> None:
    with pytest.raises(ValueError, match="positive"):
        HttpsTimeouts(total=0)


async def test_fetch_policy_function(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response())
    body = await fetch_policy(
        DOMAIN,
        str(pki["ca"]),
        FAST,
        port=good.port,
        address_override=lambda _h: "127.0.0.1",
        reach=LOCAL,
    )
    assert body == POLICY


# -- addresses policyd may not reach (security review L2) --------------------------------

AddrInfo = tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]


def resolving(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """The running loop's getaddrinfo answers ``addresses``; returns the names asked."""
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **_kwargs: object) -> list[AddrInfo]:
        asked.append(host)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(
    "addresses",
    [("127.0.0.1",), ("::ffff:127.0.0.1",), ("169.254.169.254",), ("10.0.0.1", "::1")],
)
async def test_a_name_resolving_to_no_global_address_is_not_fetched(
    pki: dict[str, Path], good: Server, monkeypatch: pytest.MonkeyPatch, addresses: tuple[str]
) -> None:
    good.handler = canned(response())
    asked = resolving(monkeypatch, *addresses)
    async with PolicyFetcher(str(pki["ca"]), FAST, port=good.port) as f:
        with pytest.raises(FetchError) as info:
            await f.fetch(DOMAIN)
    assert asked == [HOST]
    assert info.value.reason.startswith(f"{HOST}: address not allowed: {addresses[0]} is ")
    assert good.requests == [] and good.sni == []  # no connection was made


async def test_an_override_address_is_judged_too(pki: dict[str, Path], good: Server) -> None:
    good.handler = canned(response())
    fetcher = PolicyFetcher(
        str(pki["ca"]), FAST, port=good.port, address_override=lambda _host: "127.0.0.1"
    )
    async with fetcher as f:
        with pytest.raises(FetchError, match=r"address not allowed: 127\.0\.0\.1 is loopback"):
            await f.fetch(DOMAIN)
    assert good.requests == []


async def test_the_allowed_resolved_address_is_fetched_with_the_real_name(
    pki: dict[str, Path], good: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    good.handler = canned(response())
    resolving(monkeypatch, "10.0.0.1", "127.0.0.1")  # 10/8 is not in the allowlist
    async with PolicyFetcher(str(pki["ca"]), FAST, port=good.port, reach=LOCAL) as f:
        assert await f.fetch(DOMAIN) == POLICY
    assert good.sni == [HOST]  # the certificate was verified for the name, not the address
    assert f"Host: {HOST}:{good.port}".encode() in good.requests[0]


async def test_the_next_address_is_tried_when_one_refuses(
    pki: dict[str, Path], good: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    good.handler = canned(response())
    resolving(monkeypatch, "127.0.0.2", "127.0.0.1")  # nothing listens on 127.0.0.2
    async with PolicyFetcher(str(pki["ca"]), FAST, port=good.port, reach=LOCAL) as f:
        assert await f.fetch(DOMAIN) == POLICY


async def test_a_name_that_does_not_resolve(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def getaddrinfo(host: str, port: int, **_kwargs: object) -> list[AddrInfo]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    async with PolicyFetcher(str(pki["ca"]), FAST) as f:
        with pytest.raises(FetchError, match=f"cannot resolve {HOST}: Name or service"):
            await f.fetch(DOMAIN)


def test_the_modules_of_the_first_request_exist() -> None:
    """The fetcher imports these up front (httpx's transport would on its first request);
    the import errors are ignored there, so a dependency release that renames them would
    silently bring the delay back to the first MTA-STS lookup: this test says so."""
    assert all(importlib.util.find_spec(name) is not None for name in FIRST_REQUEST_MODULES)
