"""Fetch an MTA-STS policy file over HTTPS (RFC 8461 3.3), with httpx.

``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the certificate must verify against
the configured CA bundle for ``mta-sts.<domain>``, only HTTP 200 counts, redirects are not
followed, no HTTP cache is used, the media type must be ``text/plain``, the body is read as
a stream and abandoned past :data:`MAX_POLICY_BYTES`, and the whole fetch runs under one
overall deadline. Every library, TLS and OS error becomes one :class:`FetchError`.

``mta-sts.<domain>`` is resolved here, not inside httpx, so that an address policyd may
not reach (:class:`~policyd.core.reach.Reach`: loopback, private, link-local, cloud metadata
... unless ``[outbound] allow_networks`` lists it) is refused before any connection, and
the address checked is the address connected to (no second lookup to rebind). The
connection goes to that address with the real name as SNI and Host, and the certificate is
verified for the real name, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import httpx

from policyd.codec.mtasts import MAX_POLICY_BYTES
from policyd.core.names import MAX_NAME, DomainNameError, domain_name, is_hostname
from policyd.core.reach import GLOBAL_ONLY, Reach
from policyd.settings import HttpsTimeouts

__all__ = ["MAX_POLICY_BYTES", "FetchError", "PolicyFetcher", "fetch_policy"]

WELL_KNOWN_PATH: Final = "/.well-known/mta-sts.txt"  # RFC 8461 3.2
POLICY_HOST_PREFIX: Final = "mta-sts."  # RFC 8461 3.2
MAX_REASON_CHARS: Final = 200  # keep log lines and explain output short
# What httpx's transport imports on its first request under asyncio (anyio and its asyncio
# backend: 78 modules, 44 ms on the development machine), imported with the fetcher instead
# so that the first MTA-STS lookup after a start does not wait for it. Private names: a
# release that moves them costs only this head start.
FIRST_REQUEST_MODULES: Final = ("httpcore._backends.anyio", "anyio._backends._asyncio")


class FetchError(Exception):
    """The policy could not be fetched; ``reason`` is short and fit for a log line."""

    def __init__(self, domain: str, reason: str) -> None:
        reason = reason[:MAX_REASON_CHARS]
        super().__init__(f"{domain}: {reason}")
        self.domain = domain
        self.reason = reason


def policy_url_host(domain: str) -> str:
    """``mta-sts.<domain>`` for a lower-case A-label domain, or FetchError."""
    try:
        name = domain_name(domain) if domain.isascii() else None
    except DomainNameError:
        name = None
    if name is None or len(name) > MAX_NAME - len(POLICY_HOST_PREFIX) or not is_hostname(name):
        raise FetchError(domain, "invalid domain name")
    return POLICY_HOST_PREFIX + name


class PolicyFetcher:
    """One TLS context and one HTTP client, shared by every fetch.

    ``address_override`` maps a host name to the address to connect to (unit tests only);
    TLS still sends and verifies the real name. Production resolves through the system
    resolver. Either way ``reach`` judges the address before a connection is made.
    """

    def __init__(
        self,
        ca_file: str,
        timeouts: HttpsTimeouts | None = None,
        *,
        port: int = 443,
        address_override: Callable[[str], str] | None = None,
        reach: Reach = GLOBAL_ONLY,
    ) -> None:
        for module in FIRST_REQUEST_MODULES:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        self.timeouts = timeouts or HttpsTimeouts()
        self.port = port
        self._override = address_override
        self._reach = reach
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load CA file {ca_file}: {exc}") from exc
        t = self.timeouts
        self._client = httpx.AsyncClient(
            verify=context,
            follow_redirects=False,  # RFC 8461 3.3: redirects MUST NOT be followed
            trust_env=False,  # no proxy or CA settings from the environment
            http2=False,
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect),
            # No keep-alive: fetches are rare, and a pooled connection must never be reused
            # for another name (the override seam connects several names to one address).
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def fetch(self, domain: str) -> bytes:
        """The policy body, at most MAX_POLICY_BYTES; FetchError for anything else."""
        host = policy_url_host(domain)
        try:
            async with asyncio.timeout(self.timeouts.total):
                return await self._get(domain, host)
        except TimeoutError:
            raise FetchError(domain, "timeout") from None
        except httpx.TimeoutException:
            raise FetchError(domain, "timeout") from None
        except httpx.HTTPError as exc:
            raise FetchError(domain, _describe(exc)) from exc
        except (ssl.SSLError, OSError) as exc:
            raise FetchError(domain, _describe(exc)) from exc

    async def _get(self, domain: str, host: str) -> bytes:
        """Each allowed address in turn until one connects (as httpx would try them)."""
        failure: httpx.ConnectError | None = None
        for address in await self._addresses(domain, host):
            try:
                return await self._get_from(domain, host, address)
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None  # _addresses returns at least one
        raise failure

    async def _addresses(self, domain: str, host: str) -> list[str]:
        """The addresses of ``host`` that ``reach`` allows, in resolver order; FetchError
        when it has none, or none of them may be reached."""
        if self._override is not None:
            found = [self._override(host)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, self.port, type=socket.SOCK_STREAM
                )
            except socket.gaierror as exc:
                raise FetchError(domain, f"cannot resolve {host}: {exc.strerror}") from None
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = [address for address in found if self._reach.allows(address)]
        if not allowed:
            if not found:
                raise FetchError(domain, f"cannot resolve {host}: no address")
            raise FetchError(domain, f"{host}: {self._reach.refusal(found[0])}")
        return allowed

    async def _get_from(self, domain: str, host: str, address: str) -> bytes:
        netloc = host if self.port == 443 else f"{host}:{self.port}"
        target = f"[{address}]" if ":" in address else address
        url = f"https://{target}:{self.port}{WELL_KNOWN_PATH}"
        headers = {
            "Host": netloc,
            "Accept": "text/plain",
            # A compressed body could expand far past the cap in one chunk; ask for none.
            "Accept-Encoding": "identity",
            "Cache-Control": "no-cache",  # RFC 8461 3.3: HTTP caching MUST NOT be used
        }
        # The URL names the address; TLS sends and verifies the real name (sni_hostname).
        request = self._client.build_request(
            "GET", url, headers=headers, extensions={"sni_hostname": host}
        )
        response = await self._client.send(request, stream=True)
        try:
            return await _read_policy(domain, response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_policy(domain: str, response: httpx.Response) -> bytes:
    status = response.status_code
    if 300 <= status < 400:
        raise FetchError(domain, f"redirect not followed (HTTP {status})")
    if status != 200:
        raise FetchError(domain, f"HTTP {status}")
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "text/plain":  # RFC 8461 3.2; parameters such as charset are ignored
        raise FetchError(domain, f"Content-Type {media or '(none)'}"[:80])
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise FetchError(domain, f"Content-Encoding {coding[:40]} not accepted")
    length = response.headers.get("content-length")
    if (
        length is not None
        and length.isascii()
        and length.isdigit()
        and int(length) > MAX_POLICY_BYTES
    ):
        raise FetchError(domain, f"body over {MAX_POLICY_BYTES} bytes")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_POLICY_BYTES:
            raise FetchError(domain, f"body over {MAX_POLICY_BYTES} bytes")
    return bytes(body)


def _describe(exc: BaseException) -> str:
    """A short reason, preferring the TLS verification message buried in the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS error: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    kind = type(exc).__name__
    text = str(exc) or kind
    if isinstance(exc, httpx.ConnectError | OSError):
        return f"connect failed: {text}"
    if isinstance(exc, httpx.ProtocolError):
        return f"HTTP protocol error: {text}"
    return f"{kind}: {text}"


async def fetch_policy(
    domain: str,
    ca_file: str,
    timeouts: HttpsTimeouts | None = None,
    *,
    port: int = 443,
    address_override: Callable[[str], str] | None = None,
    reach: Reach = GLOBAL_ONLY,
) -> bytes:
    """One fetch with a throwaway client (tools and tests; the daemon keeps a fetcher)."""
    fetcher = PolicyFetcher(
        ca_file, timeouts, port=port, address_override=address_override, reach=reach
    )
    async with fetcher:
        return await fetcher.fetch(domain)
