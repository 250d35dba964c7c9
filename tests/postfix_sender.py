"""A throwaway, real *sending* Postfix for end-to-end tests: its own config and queue
directories, services without chroot, ``master -c DIR -s -d`` under ``ip netns exec`` (so
it reads the world's resolv.conf), TLS policy from policyd over socketmap."""

from __future__ import annotations

import re
import smtplib
import socket
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Final

from tests.world import postfix
from tests.world.world import World

SNIPPET: Final = Path(__file__).resolve().parents[1] / "etc" / "postfix" / "main.cf.snippet"
START_TIMEOUT: Final = 20.0
POLL: Final = 0.1
QUEUED = re.compile(r"queued as ([0-9A-F]+)")


def snippet_settings(**replace: str) -> list[str]:
    """The ``name = value`` lines etc/postfix/main.cf.snippet sets (comments skipped), with
    the values in ``replace`` instead of the shipped ones."""
    lines = []
    for line in SNIPPET.read_text().splitlines():
        name, eq, value = line.partition("=")
        if not eq or line.startswith(("#", " ", "\t")):
            continue
        name = name.strip()
        lines.append(f"{name} = {replace.get(name, value.strip())}")
    return lines


@dataclass
class Submitted:
    queue_id: str
    message_id: str
    recipient: str


class PostfixSender:
    """The instance: ``address:25`` takes submissions from 127.0.0.0/8."""

    def __init__(
        self,
        world: World,
        base: Path,
        address: str,
        policy_socket: str,
        ca_file: Path,
        *,
        milter: str | None = None,
        hold_smtp: bool = False,
        profile: str = "postfix",
    ) -> None:
        self.base = base
        self.address = address
        self.instance = postfix.Instance(base)
        self.conf = self.instance.conf
        self.queue = self.instance.queue
        self.maillog = self.instance.maillog
        self._setup(f"{policy_socket}:{profile}", ca_file, milter, hold_smtp)
        self.master = self.instance.master(world, f"sending postfix {address}")

    def _setup(self, policy_map: str, ca_file: Path, milter: str | None, hold_smtp: bool) -> None:
        naming = [
            "mydomain = policyd.test",
            "myorigin = sender.policyd.test",
            "mydestination =",
            "relay_domains =",
            "mynetworks = 127.0.0.0/8",
        ]
        settings = [
            "smtp_address_preference = ipv4",
            # The shipped snippet's settings, as a postmaster adds them (smtp_tls_policy_maps
            # pointed at the test daemon): deliveries test the snippet itself.
            *snippet_settings(smtp_tls_policy_maps=f"socketmap:unix:{policy_map}"),
            f"smtp_tls_CAfile = {ca_file}",
            # 2: Postfix logs which TLSA record matched ("Matched DANE EE certificate").
            "smtp_tls_loglevel = 2",
            "smtp_connect_timeout = 5s",
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            "bounce_queue_lifetime = 1h",
            "maximal_queue_lifetime = 1h",
            "delay_warning_time = 0",
            # The recorder behind mx.probe-valid.test's smtpd_proxy_filter (aiosmtpd, no
            # DSN) refuses the ORCPT parameter the receiving Postfix would pass on.
            "smtp_discard_ehlo_keywords = dsn",
        ]
        if milter is not None:
            settings += [
                f"smtpd_milters = {milter}",
                "milter_default_action = accept",
                "milter_protocol = 6",
            ]
        if hold_smtp:
            settings.append("defer_transports = smtp")  # smtp(8) never asks policyd
        self.instance.configure("sender.policyd.test", f"{self.address}:25", naming, settings)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.address, 25), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> None:
        self.master.start(self._listening, START_TIMEOUT)

    def stop(self) -> None:
        self.master.stop()

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def submit(self, recipient: str, subject: str) -> Submitted:
        """One message through the smtpd listener; returns its queue id."""
        msg = EmailMessage()
        message_id = f"<{uuid.uuid4().hex}@sender.policyd.test>"
        msg["From"] = "tester@sender.policyd.test"
        msg["To"] = recipient
        msg["Subject"] = subject
        msg["Message-ID"] = message_id
        msg.set_content(f"end-to-end test: {subject}\n")
        with smtplib.SMTP(self.address, 25, timeout=30) as smtp:
            smtp.ehlo("client.policyd.test")
            code, resp = smtp.mail("tester@sender.policyd.test")
            assert code == 250, resp
            code, resp = smtp.rcpt(recipient)
            assert code == 250, resp
            code, resp = smtp.data(msg.as_bytes())
            assert code == 250, resp
        found = QUEUED.search(resp.decode())
        assert found is not None, resp
        return Submitted(found.group(1), message_id, recipient)

    def wait_status(self, sub: Submitted, status: str, timeout: float = 30.0) -> str:
        """The first delivery log line of ``sub`` with ``status=<status>``."""
        pattern = re.compile(
            rf"^.*{sub.queue_id}: to=<{re.escape(sub.recipient)}>.*"
            rf"status={status}\b.*$",
            re.M,
        )
        deadline = time.monotonic() + timeout
        while (found := pattern.search(self.log())) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no status={status} for {sub.queue_id}:\n{self.log()[-4000:]}"
                )
            time.sleep(POLL)
        return found.group(0)

    def session(self, status_line: str) -> list[str]:
        """The lines the smtp(8) process of ``status_line`` logged for that delivery: after
        its previous ``status=`` line, up to this one."""
        pid = re.search(r"postfix/\w+\[(\d+)\]", status_line)
        assert pid is not None, status_line
        text = self.log()
        head = text[: text.index(status_line)]
        previous = list(re.finditer(rf"postfix/smtp\[{pid.group(1)}\]: .* status=", head))
        if previous:
            head = head[previous[-1].end() :]
        return [ln for ln in head.splitlines() if f"postfix/smtp[{pid.group(1)}]: " in ln]

    def tls_before(self, status_line: str) -> str | None:
        """The ``... TLS connection established ...`` line the same smtp(8) process logged
        last before ``status_line`` (None: that delivery was not encrypted)."""
        lines = [ln for ln in self.session(status_line) if " TLS connection established " in ln]
        return lines[-1] if lines else None
