"""The MTA-STS policy servers of the test world: one small asyncio + ssl process.

    python -m tests.world.https_server CONFIG.json

The JSON config names the listeners (address, port, certificate chain and key per
address, so each ``mta-sts.<domain>`` address presents its own certificate) and what each
domain serves.  SIGHUP re-reads it: behaviours change, and listeners of domains whose
behaviour is ``"down"`` are closed (connection refused) or re-opened.  After every (re)load
the server writes the config's ``generation`` to ``<CONFIG>.loaded`` so that callers can
wait for a reload to take effect.

Behaviours (``behaviour`` key of a domain): ``ok`` (status, content_type and body as
given), ``redirect`` (301 to another host), ``slow`` (headers, then one byte now and then,
never finishing), ``down`` (no listener).  A listener with ``"sni_ca"`` issues a
certificate on the fly for whatever SNI name it is asked for (the benchmark's bulk domains).

This is test equipment: a minimal HTTP/1.1 responder, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

HEADER_LIMIT: Final = 16384  # bytes of request head accepted
READ_TIMEOUT: Final = 10.0  # seconds to receive the request head
SLOW_DRIP: Final = 0.5  # seconds between two bytes of a "slow" body
SLOW_LENGTH: Final = 1000  # announced Content-Length of a "slow" body
REASONS: Final = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Error"}


class Server:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: dict[str, Any] = {}
        self.servers: dict[str, asyncio.Server] = {}  # listener name -> running server
        self.sni_contexts: dict[str, ssl.SSLContext] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="sts-sni-"))
        # The bulk CA's certificate and key and the shared leaf key, parsed once: a first
        # contact costs one signature, not three PEM parses and imports (a benchmark's
        # first cold lookup timed the server's, 52 ms against 18 ms after, as the daemon's).
        self.bulk_keys: tuple[x509.Certificate, PrivateKeyTypes, PrivateKeyTypes] | None = None

    # -- configuration and listeners ------------------------------------------------------

    async def reload(self) -> None:
        self.config = json.loads(self.config_path.read_text())
        if "bulk" in self.config and self.bulk_keys is None:  # before any listener accepts
            bulk = self.config["bulk"]
            self.bulk_keys = (
                x509.load_pem_x509_certificate(Path(bulk["ca_cert"]).read_bytes()),
                load_pem_private_key(Path(bulk["ca_key"]).read_bytes(), None),
                load_pem_private_key(Path(bulk["leaf_key"]).read_bytes(), None),
            )
        wanted = {
            name: spec
            for name, spec in self.config["listeners"].items()
            if self.domain_spec(spec.get("domain")).get("behaviour") != "down"
        }
        for name in list(self.servers):
            if name not in wanted:
                server = self.servers.pop(name)
                server.close()
                await server.wait_closed()
        for name, spec in wanted.items():
            if name not in self.servers:
                self.servers[name] = await self.listen(name, spec)
        loaded = self.config_path.with_name(self.config_path.name + ".loaded")
        loaded.write_text(str(self.config.get("generation", 0)))

    def domain_spec(self, domain: str | None) -> dict[str, Any]:
        if domain is None:
            spec: dict[str, Any] = self.config.get("bulk", {})
            return spec
        found: dict[str, Any] = self.config["domains"].get(domain, {"behaviour": "ok"})
        return found

    async def listen(self, name: str, spec: dict[str, Any]) -> asyncio.Server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(spec["chain"], spec["key"])
        if "sni_ca" in spec:
            context.sni_callback = self.sni_callback
        domain = spec.get("domain")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.handle(domain, reader, writer)

        return await asyncio.start_server(
            handle, spec["address"], spec["port"], ssl=context, reuse_address=True, backlog=1024
        )

    def sni_callback(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return
        context = self.sni_contexts.get(name)
        if context is None:
            context = self.sni_contexts[name] = self.issue_context(name)
        sock.context = context

    def issue_context(self, name: str) -> ssl.SSLContext:
        """A leaf for ``name`` signed by the bulk CA (one shared key: cheap)."""
        bulk = self.config["bulk"]
        assert self.bulk_keys is not None  # parsed by reload() with the bulk config
        ca_cert, ca_key, leaf_key = self.bulk_keys
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(leaf_key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        chain = self.tmp / f"{name}.pem"
        chain.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + Path(bulk["ca_chain"]).read_bytes()
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, bulk["leaf_key"])
        chain.unlink()
        return context

    # -- one request ----------------------------------------------------------------------

    async def handle(
        self, domain: str | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > HEADER_LIMIT:
                return
            self.record(head)
            await self.respond(self.domain_spec(domain), writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except ssl.SSLError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    def record(self, head: bytes) -> None:
        """One line per request with its Host header: tests count the fetches."""
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "host":
                with self.config_path.with_name("requests.log").open("a") as out:
                    out.write(value.strip().lower() + "\n")
                return

    async def respond(self, spec: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        behaviour = spec.get("behaviour", "ok")
        if behaviour == "slow":
            writer.write(head(200, "text/plain", SLOW_LENGTH))
            await writer.drain()
            while True:  # never finishes: the client's timeouts must end it
                await asyncio.sleep(SLOW_DRIP)
                writer.write(b"v")
                await writer.drain()
        if behaviour == "redirect":
            location = spec.get("location", "https://elsewhere.test/.well-known/mta-sts.txt")
            writer.write(head(301, "text/plain", 0, [f"Location: {location}"]))
            await writer.drain()
            return
        body = spec.get("body", "").encode()
        body += b"#" * int(spec.get("pad", 0))  # "body over 64 KiB" without a huge config
        status = int(spec.get("status", 200))
        # no_length: no Content-Length, body until EOF (the client's streaming cap must act)
        length = None if spec.get("no_length") else len(body)
        writer.write(head(status, spec.get("content_type", "text/plain"), length) + body)
        await writer.drain()


def head(
    status: int, content_type: str, length: int | None, extra: list[str] | None = None
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
        f"Content-Type: {content_type}",
        *([] if length is None else [f"Content-Length: {length}"]),
        "Connection: close",
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def main(config_path: Path) -> None:
    server = Server(config_path)
    await server.reload()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()

    def hup() -> None:
        task = loop.create_task(server.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in server.servers.values():
        s.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
