"""End to end: a real sending Postfix asks the real policyd (socketmap) for its TLS policy
and delivers real mail into the world (tests/world: signed DNS, DANE hosts, MTA-STS and
probe destinations). Proof comes from Postfix's own log lines and from the receivers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.daemon import Daemon, base_sections
from tests.postfix_sender import PostfixSender, Submitted
from tests.world import sts_world
from tests.world.procs import Background
from tests.world.smtp_world import received
from tests.world.world import World

pytestmark = pytest.mark.integration

SENDER_ADDRESS: Final = "127.0.9.1"
MILTER_SENDER_ADDRESS: Final = "127.0.9.2"
STRICT_SENDER_ADDRESS: Final = "127.0.9.3"
MILTER_PORT: Final = 8893
DELIVERY_TIMEOUT: Final = 30.0
MILTER_START: Final = 10.0  # seconds for policyd-milter to listen
PROBED: Final = (
    "probe-valid.test",
    "probe-expired.test",
    "probe-intolerant.test",
    "probe-sni.test",
    "probe-legacy.test",
)


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    """The daemon's directory: smtp(8) runs as user postfix and must reach the socket."""
    directory = Path(tempfile.mkdtemp(prefix="policyd-e2e-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture(scope="module")
def daemon(world: World, files: Path) -> Iterator[Daemon]:
    sections = base_sections(files, world.resolver)
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": 3.0}
    # DNS answers live 2 s at most, so that the daemon sees a changed (forged) MX RRset
    # within seconds, as it would once a real record's TTL ran out.
    sections["dns"].update({"min_ttl": 0, "max_ttl": 2})
    sections["probe"] = {
        "host_min_interval": 0.0,
        "reprobe_interval": 3600.0,
        "confirm_probes": 3,
        "confirm_seconds": 2.0,
        "helo_name": "probe.policyd.test",
        "connect_timeout": 2.0,
        "banner_timeout": 1.5,
        "command_timeout": 2.0,
        "tls_timeout": 2.0,
        "total_timeout": 8.0,
    }
    sections["milter"] = {"socket": f"inet:{MILTER_PORT}@127.0.0.1", "action": "log"}
    d = Daemon(files, sections, prefix=world.exec_prefix())
    d.start()
    try:
        d.probe_all(PROBED)
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def sender(world: World, daemon: Daemon, files: Path) -> Iterator[PostfixSender]:
    ca = files / "ca.pem"
    ca.write_bytes(world.ca_file.read_bytes())
    ca.chmod(0o644)
    pf = PostfixSender(world, world.dir / "postfix-sender", SENDER_ADDRESS, daemon.socket, ca)
    pf.start()
    try:
        yield pf
    finally:
        pf.stop()


def delivered(
    world: World, pf: PostfixSender, domain: str, mx: str, subject: str
) -> tuple[Submitted, str, str | None, str]:
    """Send to ``postmaster@domain``; wait for status=sent. Returns the submission, the
    status line, the TLS line of that delivery and the receiver's copy."""
    sub = pf.submit(f"postmaster@{domain}", subject)
    line = pf.wait_status(sub, "sent", DELIVERY_TIMEOUT)
    print(line)
    tls = pf.tls_before(line)
    print(tls)
    deadline = time.monotonic() + 5.0
    while True:
        copies = [p.read_text(errors="replace") for p in received(world, mx)]
        mine = [c for c in copies if sub.message_id in c]
        if mine:
            return sub, line, tls, mine[0]
        assert time.monotonic() < deadline, f"{mx} did not record {sub.message_id}"
        time.sleep(0.1)


def header(copy: str, name: str) -> str:
    for line in copy.splitlines():
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {copy[:500]}")


@dataclass(frozen=True)
class Delivery:
    """One destination's mail, and what proves it went the way policyd's answer says."""

    domain: str
    mx: str  # the receiver whose copy is looked for
    subject: str
    relay: str  # in the status=sent line
    tls_has: tuple[str, ...] = ()  # in the delivery's TLS line, every one
    tls_begins: tuple[str, ...] = ()  # that line's message begins with one of them
    world_tls: str | None = "TLS.*"  # the copy's X-World-TLS header, in full
    copy_has: str = ""  # in the receiver's copy
    sender_log_has: str = ""  # in the sending Postfix's log


VERIFIED = ": Verified TLS connection established"
DANE_TLS = ("Verified TLS", "Trusted TLS")

DELIVERIES = [
    Delivery(
        "dane-ee.test",
        "mx.dane-ee.test",
        "dane",
        "relay=mx.dane-ee.test[127.0.1.1]:25",
        tls_has=("mx.dane-ee.test[127.0.1.1]:25",),
        tls_begins=DANE_TLS,
    ),
    # mx.aaaa-bogus.test: bogus AAAA (SERVFAIL), secure A and TLSA. policyd answered TEMP
    # for the whole domain; now dane-only, and Postfix delivers over IPv4 with DANE.
    Delivery(
        "aaaa-bogus.test",
        "mx.dane-ee.test",
        "aaaa-bogus",
        "relay=mx.aaaa-bogus.test[127.0.1.1]:25",
        tls_begins=DANE_TLS,
    ),
    Delivery(
        "sts-enforce.test",
        "mx.sts-enforce.test",
        "mta-sts",
        "relay=mx.sts-enforce.test[",
        tls_has=(VERIFIED,),
    ),
    # The recorder sits behind the receiving Postfix: its Received header shows the TLS.
    Delivery(
        "probe-valid.test",
        "mx.probe-valid.test",
        "probe-valid",
        "relay=mx.probe-valid.test[127.0.3.1]:25",
        tls_has=(VERIFIED,),
        world_tls=None,
        copy_has="with ESMTPS",
    ),
    # The server presents its valid certificate only to a client that sends SNI; the
    # probe did, and policyd's "verify servername=hostname" makes Postfix do the same.
    Delivery(
        "probe-sni.test",
        "mx.probe-sni.test",
        "sni",
        "relay=mx.probe-sni.test[127.0.3.14]:25",
        tls_has=(VERIFIED,),
    ),
    # TLS 1.0 with a SHA-1 signed key exchange and a valid certificate: "verify" (what
    # policyd answered before) deferred with "legacy sigalg disallowed"; encrypt delivers.
    Delivery(
        "probe-legacy.test",
        "mx.probe-legacy.test",
        "legacy",
        "relay=mx.probe-legacy.test[127.0.3.15]:25",
        tls_has=("TLS connection established", "TLSv1 with cipher"),
    ),
    Delivery(
        "probe-expired.test",
        "mx.probe-expired.test",
        "probe-expired",
        "relay=mx.probe-expired.test[127.0.3.2]:25",
        tls_has=(": Untrusted TLS connection established",),
    ),
    # Postfix tried STARTTLS (policy "may"), the handshake failed, then it sent in clear.
    Delivery(
        "probe-intolerant.test",
        "mx.probe-intolerant.test",
        "intolerant",
        "relay=mx.probe-intolerant.test[127.0.3.9]:25",
        world_tls="none",
        sender_log_has="SSL_connect error to mx.probe-intolerant.test[127.0.3.9]:25",
    ),
]


@pytest.mark.parametrize("case", DELIVERIES, ids=lambda c: c.subject)
def test_delivered_as_answered(world: World, sender: PostfixSender, case: Delivery) -> None:
    _, line, tls, copy = delivered(world, sender, case.domain, case.mx, case.subject)
    assert case.relay in line
    if case.tls_has or case.tls_begins:
        assert tls is not None, line
        assert all(part in tls for part in case.tls_has), tls
        if case.tls_begins:
            assert tls.split(": ", 1)[1].startswith(case.tls_begins), tls
    if case.world_tls is not None:
        assert re.fullmatch(case.world_tls, header(copy, "X-World-TLS")), copy[:500]
    assert case.copy_has in copy
    assert case.sender_log_has in sender.log()


def never_delivered(world: World, pf: PostfixSender, sub: Submitted, mx: str) -> str:
    """After the queue manager retried ``sub`` (backoff 1-2 s): several attempts, none
    sent, nothing at ``mx``. The sender's log."""
    log = pf.log()
    attempts = [x for x in log.splitlines() if f"{sub.queue_id}: to=<{sub.recipient}>" in x]
    assert len(attempts) >= 2, attempts
    sent = [x for x in log.splitlines() if sub.queue_id in x and "status=sent" in x]
    assert not sent, log[-3000:]
    copies = [p.read_text(errors="replace") for p in received(world, mx)]
    assert not [c for c in copies if sub.message_id in c]
    return log


def test_dane_mismatch_stays_deferred(world: World, sender: PostfixSender) -> None:
    sub = sender.submit("postmaster@dane-mismatch.test", "dane-mismatch")
    line = sender.wait_status(sub, "deferred", DELIVERY_TIMEOUT)
    print(line)
    # Let the queue manager retry a few times (backoff 1-2 s): never sent, never received.
    time.sleep(6.0)
    log = never_delivered(world, sender, sub, "mx.dane-mismatch.test")
    attempts = [x for x in log.splitlines() if f"{sub.queue_id}: to=<{sub.recipient}>" in x]
    assert all("status=deferred (Server certificate not verified)" in x for x in attempts)
    assert (
        "server certificate verification failed for mx.dane-mismatch.test[127.0.1.3]:25: "
        "num=65:no matching DANE TLSA records" in log
    )


@pytest.fixture(scope="module")
def strict_sender(world: World, daemon: Daemon, files: Path) -> Iterator[PostfixSender]:
    """A sending Postfix whose smtp_tls_policy_maps names the shipped strict profile."""
    pf = PostfixSender(
        world,
        world.dir / "postfix-strict",
        STRICT_SENDER_ADDRESS,
        daemon.socket,
        files / "ca.pem",
        profile="strict",
    )
    pf.start()
    try:
        yield pf
    finally:
        pf.stop()


def test_strict_profile_answers_accepted_by_this_postfix(
    world: World, sender: PostfixSender, strict_sender: PostfixSender, daemon: Daemon
) -> None:
    """The shipped strict profile must not break Postfix before 3.10, which defers on
    attributes it does not know ("invalid attribute name"): its MTA-STS answer is
    delivered over verified TLS by the Postfix of this machine."""
    version = subprocess.run(
        ["postconf", "-c", str(strict_sender.conf), "-h", "mail_version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print("Postfix", version)
    assert daemon.postmap("sts-enforce.test", name="strict") == [
        "secure match=mx.sts-enforce.test servername=hostname"
    ]
    _, line, tls, _ = delivered(
        world, strict_sender, "sts-enforce.test", "mx.sts-enforce.test", "strict mta-sts"
    )
    assert "relay=mx.sts-enforce.test[" in line
    assert tls is not None and ": Verified TLS connection established" in tls, tls
    assert "invalid attribute name" not in strict_sender.log()
    _, line, tls, _ = delivered(world, strict_sender, "dane-ee.test", "mx.dane-ee.test", "strict")
    assert tls is not None and tls.split(": ", 1)[1].startswith(("Verified TLS", "Trusted TLS"))


def test_dane_for_unsigned_mx_means_dane(world: World, sender: PostfixSender) -> None:
    """unsignedmx.test: unsigned MX RRset pointing at mx.dane-ee.test (signed, TLSA).
    policyd answers dane; with smtp_tls_dane_insecure_mx_policy = dane (the main.cf
    snippet) Postfix 3.7 authenticates the host by its TLSA records instead of falling
    back to opportunistic TLS (its default there unless smtp_tls_security_level = dane)."""
    _, line, tls, _ = delivered(
        world, sender, "unsignedmx.test", "mx.dane-ee.test", "dane, insecure mx"
    )
    assert "relay=mx.dane-ee.test[127.0.1.1]:25" in line
    # Postfix logs "Trusted" both ways (DANE for an insecure MX does not authenticate the
    # MX name; may checks the chain against smtp_tls_CAfile): the TLSA match tells.
    assert tls is not None and ": Trusted TLS connection established" in tls, tls
    session = sender.session(line)
    assert any(
        "mx.dane-ee.test[127.0.1.1]:25: Matched DANE EE certificate at depth 0: 3 1 1" in ln
        for ln in session
    ), session


def test_forged_mx_of_cached_sts_domain_defers(
    world: World, sender: PostfixSender, daemon: Daemon
) -> None:
    """Security review C1, live: sts-forged.test (unsigned zone) has an enforce policy
    cached; an attacker forges its MX to mx.dane-ee.test, a host in the attacker's signed
    zone with TLSA 3 1 1 of the key it serves. policyd keeps the policy's secure match=,
    so real Postfix defers rather than hand the mail to the forged host (before the fix it
    answered dane, which Postfix applies to that host and delivers)."""
    domain, real_mx, forged_mx = "sts-forged.test", "mx.sts-forged.test", sts_world.FORGED_TO
    _, line, tls, _ = delivered(world, sender, domain, real_mx, "before the forgery")
    assert f"relay={real_mx}[" in line
    assert tls is not None and ": Verified TLS connection established" in tls, tls
    # From now on only the cached policy protects the domain: its policy host goes away.
    sts_world.take_down(world, domain)
    sts_world.set_mx(world, domain, forged_mx)
    try:
        time.sleep(2.5)  # the daemon's cached MX answer expires (max_ttl = 2 s)
        sub = sender.submit(f"postmaster@{domain}", "after the forgery")
        line = sender.wait_status(sub, "deferred", DELIVERY_TIMEOUT)
        print(line)
        assert f"relay={forged_mx}[" in line or forged_mx in line, line
        assert "Server certificate not verified" in line, line
        time.sleep(4.0)  # let the queue manager retry (backoff 1-2 s)
        never_delivered(world, sender, sub, forged_mx)
        explained = daemon.policyctl("explain", domain)
        print(explained.stdout)
        assert explained.returncode == 0, explained.stderr
        assert f"secure match={real_mx} servername=hostname" in explained.stdout
        assert (
            f"DANE not on every path (usable TLSA at {forged_mx}, MX RRset not signed)"
            in explained.stdout
        ), explained.stdout
    finally:
        sts_world.set_mx(world, domain, real_mx)
        sts_world.bring_up(world, domain)


@pytest.fixture
def milter_sender(world: World, daemon: Daemon, files: Path) -> Iterator[PostfixSender]:
    """A second sending Postfix with policyd-milter in smtpd_milters (action ``none``:
    it only warms) and smtp deliveries held back, so only the milter asks the daemon."""
    config = files / "milter.toml"
    config.write_text(
        f'[server]\ncontrol = "unix:{daemon.control}"\n\n'
        f'[milter]\nsocket = "inet:{MILTER_PORT}@127.0.0.1"\naction = "none"\ntimeout = 2.0\n'
    )
    log = files / "milter.log"
    milter = Background(
        "policyd-milter", [sys.executable, "-m", "policyd.cli.milter", "--config", str(config)], log
    )
    pf = PostfixSender(
        world,
        world.dir / "postfix-milter",
        MILTER_SENDER_ADDRESS,
        daemon.socket,
        files / "ca.pem",
        milter=f"inet:127.0.0.1:{MILTER_PORT}",
        hold_smtp=True,
    )
    try:
        milter.start(lambda: "listening on" in log.read_text(errors="replace"), MILTER_START)
        pf.start()
        yield pf
    finally:
        pf.stop()
        milter.stop()


def test_milter_warms_daemon(
    sender: PostfixSender, milter_sender: PostfixSender, daemon: Daemon
) -> None:
    domain = "dane-ta.test"  # asked by no other test of this module
    assert domain not in daemon.log()
    sub = milter_sender.submit(f"postmaster@{domain}", "milter")
    daemon.wait_log(re.escape(f"{domain}: level="))
    print([x for x in daemon.log().splitlines() if domain in x])
    # Postfix itself never asked: its smtp transport is deferred (defer_transports). The
    # daemon may answer the milter before the queue manager has logged the message.
    queued = f"{sub.queue_id}: from=<tester@sender.policyd.test>"
    deadline = time.monotonic() + 10.0
    while queued not in (log := milter_sender.log()):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.1)
    assert not [x for x in log.splitlines() if sub.queue_id in x and "status=sent" in x]
