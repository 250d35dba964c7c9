"""STARTTLS probe of an MX address: what a sending MTA would meet there.

Banner, EHLO, STARTTLS (RFC 3207), a handshake that does not verify (the chain is judged
afterwards by :mod:`policyd.adapters.certverify`), QUIT. Every step has its own time bound
and the whole probe one more. Library errors are translated here into a
:class:`~policyd.core.evidence.ProbeHost`; nothing but that leaves :func:`probe_address`.

A host that cannot be reached or does not greet us is UNREACHABLE: that says nothing about
its TLS and is never counted against it. So is an address policyd may not connect to
(:class:`~policyd.core.reach.Reach`: loopback, private, link-local... unless allowed), which
is refused before any connection is attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.x509.verification import Store

from policyd.adapters.certverify import fingerprints, verdict_for
from policyd.core.evidence import DnsStatus, MxHost, ProbeHost, ProbeVerdict
from policyd.core.reach import GLOBAL_ONLY, Reach
from policyd.core.types import SMTP_PORT
from policyd.settings import ProbeTimeouts

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with CRLF; some servers exceed it.
MAX_REPLY_LINE: Final = 1024
# RFC 5321 4.2.1 sets no bound on multi-line replies; an EHLO reply has a dozen or two lines.
MAX_REPLY_LINES: Final = 64
# The leaf plus Postfix's default smtp_tls_scert_verifydepth (9) issuers, postconf(5).
MAX_PRESENTED_CERTS: Final = 10
# At most this many addresses per MX host, as postconf(5) smtp_mx_address_limit (5).
MAX_ADDRESSES_PER_HOST: Final = 5
CLOSE_TIMEOUT: Final = 5.0  # seconds to wait for the peer to take our close (TLS close_notify)
MAX_DETAIL: Final = 200  # characters of server text or library message kept in a detail
# OpenSSL security level of Postfix's verify/secure handshakes: Debian's openssl.cnf
# (CipherString = DEFAULT:@SECLEVEL=2); OpenSSL 3.0 refuses SHA-1 signatures from level 1.
POSTFIX_SECURITY_LEVEL: Final = 2

# SSL_OP_LEGACY_SERVER_CONNECT (OpenSSL ssl.h): talk to servers without RFC 5746 secure
# renegotiation, which OpenSSL 3 refuses by default. ssl.OP_LEGACY_SERVER_CONNECT from 3.12.
_OP_LEGACY_SERVER_CONNECT: Final = 0x4
_ENCODING_DER: Final = 2  # _ssl.ENCODING_DER


@dataclass(frozen=True, slots=True)
class _Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def summary(self) -> str:
        return _clip(f"{self.code} {self.lines[0]}".strip())

    @property
    def keywords(self) -> frozenset[str]:
        """EHLO keywords (RFC 5321 4.1.1.1): the first word of each line after the first."""
        return frozenset(line.split()[0].upper() for line in self.lines[1:] if line.split())


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how one probe connects."""

    host: str  # the MX name: SNI and the name the certificate must match
    address: str
    port: int
    timeouts: ProbeTimeouts
    helo_name: str


@dataclass(frozen=True, slots=True)
class _Session:
    protocol: str
    cipher: str
    chain: list[x509.Certificate]


class _StepFailed(Exception):
    """One step of a session failed; ``verdict`` is what that means for the probe."""

    def __init__(self, verdict: ProbeVerdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail


async def probe_host(
    mx: MxHost,
    *,
    port: int = SMTP_PORT,
    roots: Store,
    timeouts: ProbeTimeouts = ProbeTimeouts(),
    helo_name: str,
    now: Callable[[], float],
    reach: Reach = GLOBAL_ONLY,
) -> list[ProbeHost]:
    """Probe each address (IPv4 and IPv6) of one MX host, one after the other; an address
    ``reach`` refuses is UNREACHABLE without a connection."""
    host = mx.name  # a DomainName already (MxHost)
    if mx.address is DnsStatus.FAILED or not mx.addresses:
        detail = mx.address_error or "no address"
        return [ProbeHost(host, "", ProbeVerdict.UNREACHABLE, detail, probed_at=now())]
    return [
        await probe_address(
            host,
            address,
            port=port,
            roots=roots,
            timeouts=timeouts,
            helo_name=helo_name,
            now=now,
            reach=reach,
        )
        for address in mx.addresses[:MAX_ADDRESSES_PER_HOST]
    ]


async def probe_address(
    host: str,
    address: str,
    *,
    port: int = SMTP_PORT,
    roots: Store,
    timeouts: ProbeTimeouts = ProbeTimeouts(),
    helo_name: str,
    now: Callable[[], float],
    reach: Reach = GLOBAL_ONLY,
) -> ProbeHost:
    """Probe ``address`` as the MX host ``host`` (the name the certificate must match);
    UNREACHABLE with no connection attempted when ``reach`` refuses the address."""
    if not helo_name or any(c.isspace() for c in helo_name):
        raise ValueError(f"bad EHLO name {helo_name!r}")
    started = now()
    refused = reach.refusal(address)
    if refused:
        return ProbeHost(host, address, ProbeVerdict.UNREACHABLE, refused, probed_at=started)
    target = _Target(host, address, port, timeouts, helo_name)
    try:
        async with asyncio.timeout(timeouts.total):
            return await _probe(target, roots, now, started)
    except TimeoutError:
        detail = f"probe took longer than {timeouts.total:g}s"
        return ProbeHost(host, address, ProbeVerdict.UNREACHABLE, detail, probed_at=started)


async def _probe(
    target: _Target, roots: Store, now: Callable[[], float], started: float
) -> ProbeHost:
    host, address = target.host, target.address
    legacy = ""
    try:
        session = await _session(target, _verify_context())
    except _StepFailed as first:
        if first.verdict is not ProbeVerdict.TLS_INTOLERANT:
            return ProbeHost(host, address, first.verdict, first.detail, probed_at=started)
        # Postfix (3.7, OpenSSL 3; seen with posttls-finger) completes at may/encrypt
        # handshakes it refuses at verify/secure, say TLS 1.0/1.1 with SHA-1 signatures
        # ("legacy sigalg disallowed"). A second connection, as lenient as may/encrypt,
        # tells those servers from truly intolerant ones.
        try:
            session = await _session(target, _encrypt_context())
        except _StepFailed as second:
            detail = f"handshake failed: {first.detail}; as at may/encrypt: {second.detail}"
            return ProbeHost(host, address, ProbeVerdict.TLS_INTOLERANT, detail, probed_at=started)
        legacy = first.detail
    at = datetime.fromtimestamp(now(), UTC)
    verdict, detail = verdict_for(session.chain, host, roots, at)
    if legacy:
        # Whatever the certificate, Postfix cannot verify a server it cannot handshake
        # with at verify/secure: encrypted, never verified.
        verdict = ProbeVerdict.LEGACY_TLS
        detail = _clip(
            f"handshake only as at may/encrypt ({session.protocol} {session.cipher}); "
            f"at verify/secure: {legacy}; certificate: {detail}"
        )
    leaf_fp, spki_fp = fingerprints(session.chain[0]) if session.chain else ("", "")
    return ProbeHost(
        host,
        address,
        verdict,
        detail,
        protocol=session.protocol,
        cipher=session.cipher,
        leaf_sha256=leaf_fp,
        spki_sha256=spki_fp,
        probed_at=started,
    )


async def _session(target: _Target, context: ssl.SSLContext) -> _Session:
    try:
        async with asyncio.timeout(target.timeouts.connect):
            reader, writer = await asyncio.open_connection(
                target.address, target.port, limit=MAX_REPLY_LINE
            )
    except TimeoutError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, "connect: timed out") from exc
    except OSError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"connect: {_describe(exc)}") from exc
    try:
        return await _converse(reader, writer, target, context)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await writer.wait_closed()


async def _converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: _Target,
    context: ssl.SSLContext,
) -> _Session:
    timeouts = target.timeouts
    banner = await _read_reply(reader, timeouts.banner, "banner")
    if banner.code != 220:  # RFC 5321 3.1: 554 means "no service here"
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"banner {banner.summary}")
    ehlo = await _command(reader, writer, f"EHLO {target.helo_name}", timeouts.command)
    if ehlo.code != 250:
        # Most often a rejection of the probe itself (no PTR, listed): nothing about TLS.
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"EHLO answered {ehlo.summary}")
    if "STARTTLS" not in ehlo.keywords:
        await _quit(reader, writer, timeouts.command)
        raise _StepFailed(ProbeVerdict.NO_STARTTLS, "EHLO does not offer STARTTLS")
    reply = await _command(reader, writer, "STARTTLS", timeouts.command)
    if reply.code != 220:  # RFC 3207 4: 454 TLS not available due to temporary reason
        await _quit(reader, writer, timeouts.command)
        raise _StepFailed(ProbeVerdict.NO_STARTTLS, f"STARTTLS answered {reply.summary}")
    try:
        async with asyncio.timeout(timeouts.tls):
            await writer.start_tls(
                context, server_hostname=target.host, ssl_handshake_timeout=timeouts.tls
            )
    except TimeoutError as exc:
        raise _StepFailed(ProbeVerdict.TLS_INTOLERANT, "handshake timed out") from exc
    except (OSError, asyncio.IncompleteReadError) as exc:  # ssl.SSLError is an OSError
        raise _StepFailed(ProbeVerdict.TLS_INTOLERANT, _describe(exc)) from exc
    ssl_object = writer.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise _StepFailed(ProbeVerdict.INVALID, "no TLS session after the handshake")
    cipher = ssl_object.cipher()
    try:
        chain = presented_chain(ssl_object)
    except ValueError as exc:
        raise _StepFailed(ProbeVerdict.INVALID, f"unparseable certificate: {exc}") from exc
    session = _Session(ssl_object.version() or "", cipher[0] if cipher else "", chain)
    # RFC 3207 4.2 would have us EHLO again; we only say goodbye.
    await _quit(reader, writer, timeouts.command)
    return session


def presented_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    """The certificates the server sent, leaf first, unverified.

    Python 3.11 has no public API for the chain the peer presented: it becomes public as
    ``SSLObject.get_unverified_chain()`` in 3.13 (returning DER bytes), and exists since
    3.10 only on the private C object ``_sslobj`` (returning ``_ssl.Certificate``). The
    other way would be pyOpenSSL, which cannot ride on asyncio's ``start_tls``. When neither
    is there, the leaf alone (``getpeercert(binary_form=True)``) is all we get, and a chain
    that needs its intermediates then judges as UNKNOWN_ISSUER.

    Raises ValueError when the leaf cannot be parsed; unparseable issuers are skipped.
    """
    ders: list[bytes] = []
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if callable(getter):
        for item in getter() or ():
            der = item if isinstance(item, bytes) else _certificate_der(item)
            if der:
                ders.append(der)
    if not ders:
        leaf = ssl_object.getpeercert(binary_form=True)
        if leaf:
            ders.append(leaf)
    chain: list[x509.Certificate] = []
    for i, der in enumerate(ders[:MAX_PRESENTED_CERTS]):
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            if i == 0:
                raise
    return chain


def _certificate_der(item: object) -> bytes:
    to_bytes = getattr(item, "public_bytes", None)
    if not callable(to_bytes):
        return b""
    der = to_bytes(_ENCODING_DER)
    return der if isinstance(der, bytes) else b""


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str, timeout: float
) -> _Reply:
    verb = line.split(maxsplit=1)[0]
    try:
        async with asyncio.timeout(timeout):
            writer.write(line.encode("ascii") + b"\r\n")
            await writer.drain()
    except TimeoutError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{verb}: send timed out") from exc
    except OSError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{verb}: {_describe(exc)}") from exc
    return await _read_reply(reader, timeout, verb)


async def _quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
    """Say goodbye (RFC 5321 4.1.1.10); whatever happens then does not change the verdict."""
    with contextlib.suppress(_StepFailed):
        await _command(reader, writer, "QUIT", timeout)


async def _read_reply(reader: asyncio.StreamReader, timeout: float, step: str) -> _Reply:
    """One (multi-line) reply, RFC 5321 4.2.1: ``code-text`` lines, then ``code text``."""
    codes: set[bytes] = set()
    lines: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: connection closed")
                raw = raw.rstrip(b"\r\n")
                code, sep, text = raw[:3], raw[3:4], raw[4:]
                if not (code.isdigit() and len(code) == 3 and sep in (b"", b" ", b"-")):
                    shown = _clip(raw.decode("ascii", "replace"))
                    raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: not SMTP: {shown!r}")
                codes.add(code)
                lines.append(text.decode("utf-8", "replace"))
                if sep != b"-":
                    break
                if len(lines) >= MAX_REPLY_LINES:
                    raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: reply too long")
    except TimeoutError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: timed out") from exc
    except ValueError as exc:  # StreamReader.readline: a line longer than the stream limit
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: reply line too long") from exc
    except OSError as exc:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: {_describe(exc)}") from exc
    if len(codes) != 1:
        raise _StepFailed(ProbeVerdict.UNREACHABLE, f"{step}: mixed reply codes")
    return _Reply(int(codes.pop()), tuple(lines))


def _verify_context() -> ssl.SSLContext:
    """The handshake Postfix's smtp(8) makes at verify/secure: TLS 1.0 and up (Postfix's
    default smtp_tls_protocols), OpenSSL's DEFAULT ciphers at the security level Debian's
    openssl.cnf sets (CipherString = DEFAULT:@SECLEVEL=2), which Postfix inherits. No
    verification here: the chain is judged afterwards, so every certificate is seen."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Python warns that TLS 1.0 is deprecated; Postfix still offers it, and so do we.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers(f"DEFAULT:@SECLEVEL={POSTFIX_SECURITY_LEVEL}")
    return context


def _encrypt_context() -> ssl.SSLContext:
    """At least as lenient as Postfix at may/encrypt: anything OpenSSL can still speak
    (security level 0), legacy renegotiation included."""
    context = _verify_context()
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.options |= _OP_LEGACY_SERVER_CONNECT
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return _clip(f"TLS {exc.reason}")
    if isinstance(exc, OSError) and exc.strerror:
        return _clip(exc.strerror)
    return _clip(str(exc) or type(exc).__name__)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
