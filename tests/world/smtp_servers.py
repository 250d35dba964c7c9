"""The world's SMTP servers in one process: ``python smtp_servers.py CONFIG.json``.

Started by :mod:`tests.world.smtp_world` inside the namespace. CONFIG lists one server per
address (port 25 of an MX host's own address), each with a ``behaviour``:

- a key of its ``certs`` table (``"valid"``, ``"expired"``, ...): ESMTP with STARTTLS,
  presenting that certificate chain; mail is accepted and recorded;
- ``"plain"``: ESMTP without STARTTLS; mail is accepted and recorded;
- ``"intolerant"``: offers STARTTLS, answers 220, then sends a TLS alert and hangs up; a
  client that retries without TLS can deliver (recorded);
- ``"tarpit"``: accepts the connection and never says a word;
- ``"sni-only"``: a certificate for another name, unless the client sends SNI for the
  host (then the host's valid chain);
- ``"legacy"``: the valid chain over TLS 1.0 only, key exchange signed with SHA-1.

Every accepted message becomes one file ``<record_dir>/<host>/<ns>.eml`` with
``X-World-*`` headers (envelope, TLS version) before the content.

SIGHUP re-reads CONFIG: new connections get the new behaviour (``tests.world.smtp_world
.switch``); the process then writes the generation number from CONFIG to ``ack_file``.
``ready_file`` is written once every listener is bound.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import ssl
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session

# A fatal TLS alert record: handshake_failure (RFC 8446 6 / RFC 5246 7.2).
TLS_ALERT: Final = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28])
DATA_SIZE_LIMIT: Final = 10 * 1024 * 1024


class Recorder:
    """aiosmtpd handler: every message into its own file."""

    def __init__(self, directory: Path, host: str) -> None:
        self.dir = directory / host
        self.host = host

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        tls = session.ssl.get("cipher", ("none", "none", 0))[1] if session.ssl else "none"
        head = (
            f"X-World-Host: {self.host}\r\n"
            f"X-World-Mail-From: {envelope.mail_from}\r\n"
            f"X-World-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
            f"X-World-TLS: {tls}\r\n"
        ).encode()
        content = envelope.original_content or b""
        path = self.dir / f"{time.time_ns()}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(head + content)
        tmp.rename(path)
        return "250 2.0.0 Ok: recorded"


class Intolerant(SMTP):
    """Offers STARTTLS, accepts it, then breaks the handshake."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 2.0.0 Ready to start TLS")
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(TLS_ALERT)
            transport.close()


class Tarpit(asyncio.Protocol):
    """Accepts and never answers (the peer times out)."""

    def data_received(self, data: bytes) -> None:
        pass


def tls_context(chain: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    return ctx


def legacy_context(chain: str, key: str) -> ssl.SSLContext:
    """TLS 1.0 only, every cipher: (EC)DHE key exchange signed with SHA-1."""
    ctx = tls_context(chain, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def sni_context(default: ssl.SSLContext, host: str, named: ssl.SSLContext) -> ssl.SSLContext:
    """``default``'s certificate, unless the client asks for ``host`` by SNI."""

    def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name is not None and server_name.lower() == host:
            sock.context = named

    default.sni_callback = pick
    return default


def contexts_for(srv: dict[str, Any]) -> dict[str, ssl.SSLContext]:
    out: dict[str, ssl.SSLContext] = {}
    for name, (chain, keyfile) in srv["certs"].items():
        out[name] = (
            legacy_context(chain, keyfile) if name == "legacy" else tls_context(chain, keyfile)
        )
    if "sni-only" in out and "valid" in out:
        out["sni-only"] = sni_context(out["sni-only"], srv["host"], out["valid"])
    return out


class Servers:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.behaviour: dict[str, str] = {}  # "address:port" -> behaviour
        self.contexts: dict[str, dict[str, ssl.SSLContext]] = {}
        self.config: dict[str, Any] = {}
        self.load()

    def load(self) -> None:
        self.config = json.loads(self.config_path.read_text())
        for srv in self.config["servers"]:
            key = f"{srv['address']}:{srv['port']}"
            self.behaviour[key] = srv["behaviour"]
            if key not in self.contexts:
                self.contexts[key] = contexts_for(srv)

    def factory(self, srv: dict[str, Any]) -> asyncio.Protocol:
        key = f"{srv['address']}:{srv['port']}"
        behaviour = self.behaviour[key]
        # One line per accepted connection: tests count the sessions a server saw.
        sessions = Path(self.config["record_dir"]).parent / "sessions"
        sessions.mkdir(exist_ok=True)
        with (sessions / key).open("a") as out:
            out.write(f"{behaviour}\n")
        if behaviour == "tarpit":
            return Tarpit()
        handler = Recorder(Path(self.config["record_dir"]), srv["host"])
        common: dict[str, Any] = {
            "hostname": srv["host"],
            "data_size_limit": DATA_SIZE_LIMIT,
            "require_starttls": False,
            "decode_data": False,
        }
        if behaviour == "plain":
            return SMTP(handler, **common)
        if behaviour == "intolerant":
            any_ctx = next(iter(self.contexts[key].values()))
            return Intolerant(handler, tls_context=any_ctx, **common)
        return SMTP(handler, tls_context=self.contexts[key][behaviour], **common)

    def reload(self) -> None:
        self.load()
        Path(self.config["ack_file"]).write_text(str(self.config["generation"]))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        listeners = []
        for srv in self.config["servers"]:
            factory: Callable[[], asyncio.Protocol] = functools.partial(self.factory, srv)
            listeners.append(
                await loop.create_server(
                    factory,
                    srv["address"],
                    srv["port"],
                    reuse_address=True,
                )
            )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        Path(self.config["ready_file"]).write_text("ready")
        await stop.wait()
        for listener in listeners:
            listener.close()


def main(argv: list[str]) -> int:
    asyncio.run(Servers(Path(argv[1])).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
