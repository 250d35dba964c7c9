"""STARTTLS probe evidence end to end: the world's SMTP servers (a real Postfix smtpd and
aiosmtpd helpers, tests.world.smtp_world), the real daemon probing them over port 25, and
Postfix's postmap (and posttls-finger) as the judges."""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tests.daemon import Daemon, base_sections
from tests.postfix_conf import client_env
from tests.world import smtp_world
from tests.world.smtp_world import CASES
from tests.world.world import World

pytestmark = pytest.mark.integration

FINGER_TIMEOUT: Final = 30.0
CONFIRM_PROBES: Final = 3
CONFIRM_SECONDS: Final = 2.0


def probe(daemon: Daemon, domain: str) -> None:
    res = daemon.policyctl("probe", domain, "--wait")
    assert res.returncode == 0, res.stderr + res.stdout


def explain(daemon: Daemon, domain: str) -> dict[str, Any]:
    res = daemon.policyctl("explain", domain, "--json")
    assert res.returncode == 0, res.stderr + res.stdout
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def host_verdicts(doc: Any) -> dict[str, str]:
    """Every ``{"host": ..., "verdict": ...}`` object anywhere in an explain document."""
    found: dict[str, str] = {}
    if isinstance(doc, dict):
        if isinstance(doc.get("host"), str) and isinstance(doc.get("verdict"), str):
            found[doc["host"].rstrip(".")] = doc["verdict"]
        for value in doc.values():
            found.update(host_verdicts(value))
    elif isinstance(doc, list):
        for value in doc:
            found.update(host_verdicts(value))
    return found


@pytest.fixture(scope="module")
def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("probe")
    sections = base_sections(directory, world.resolver)
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": 1.0}
    sections["probe"] = {
        "host_min_interval": 0.0,
        "reprobe_interval": 3600.0,
        "confirm_probes": CONFIRM_PROBES,
        "confirm_seconds": CONFIRM_SECONDS,
        "helo_name": "probe.policyd.test",
        "connect_timeout": 2.0,
        "banner_timeout": 1.5,  # the tarpit costs this much
        "command_timeout": 2.0,
        "tls_timeout": 2.0,
        "total_timeout": 8.0,
    }
    d = Daemon(directory, sections)
    d.start()
    try:
        d.probe_all(case.domain for case in CASES.values())
        yield d
    finally:
        d.stop()


STATIC = [name for name in CASES if name != "probe-damping"]


@pytest.mark.parametrize("name", STATIC)
def test_probe_level(daemon: Daemon, name: str) -> None:
    case = CASES[name]
    assert daemon.postmap(case.domain) == [case.expected], daemon.log()[-3000:]


@pytest.mark.parametrize("name", STATIC)
def test_explain_shows_host_verdicts(daemon: Daemon, name: str) -> None:
    case = CASES[name]
    verdicts = host_verdicts(explain(daemon, case.domain))
    assert {h: verdicts.get(h) for h in case.hosts} == dict(
        zip(case.hosts, case.verdicts, strict=True)
    ), verdicts


def test_world_scenarios_registered(world: World) -> None:
    for case in CASES.values():
        assert world.expected[case.domain] == case.expected


@pytest.mark.parametrize("name", ["probe-valid", "probe-wildcard"])
def test_strict_profile_pins_mx_names(daemon: Daemon, name: str) -> None:
    case = CASES[name]
    got = daemon.postmap(case.domain, name="strict")
    assert got == [f"secure match={':'.join(case.hosts)} servername=hostname"]


def test_strict_profile_no_tls(daemon: Daemon) -> None:
    # strict: an MX without working TLS still gets mail (may), unknown destinations NOTFOUND
    assert daemon.postmap(CASES["probe-nostarttls"].domain, name="strict") == ["may"]
    assert daemon.postmap(CASES["probe-tarpit"].domain, name="strict") == ["NOTFOUND"]


def test_probe_log_lines(daemon: Daemon) -> None:
    log = daemon.log()
    assert "probe-valid.test: probe level=verify hosts=mx.probe-valid.test[127.0.3.1]=valid" in log
    assert "mx.probe-tarpit.test[127.0.3.10]=unreachable" in log


def test_damping(daemon: Daemon, world: World) -> None:
    domain = CASES["probe-damping"].domain
    probe(daemon, domain)
    assert daemon.postmap(domain) == [smtp_world.VERIFIED]
    smtp_world.switch(world, domain, "expired")
    try:
        first_weaker = time.monotonic()
        for n in range(1, CONFIRM_PROBES):
            probe(daemon, domain)
            assert daemon.postmap(domain) == [smtp_world.VERIFIED], f"after {n} weaker probe(s)"
            wanted = f"{domain}: probe saw weaker level encrypt ({n}/{CONFIRM_PROBES})"
            assert wanted in daemon.log()
            assert "possible attack" in daemon.log()
        explained = json.dumps(explain(daemon, domain))
        assert "holding against encrypt" in explained
        # Held back: no alert yet (issue 15: the alert comes after damping).
        assert f"alert=level-dropped destination={domain}" not in daemon.log()
        time.sleep(max(0.0, CONFIRM_SECONDS + 0.2 - (time.monotonic() - first_weaker)))
        probe(daemon, domain)
        assert daemon.postmap(domain) == ["encrypt"]
        wanted = (
            f"alert=level-dropped destination={domain} profile=postfix "
            "previous=verify,servername=hostname level=encrypt"
        )
        assert wanted in daemon.log()
        assert host_verdicts(explain(daemon, domain)) == {"mx.probe-damping.test": "expired"}
    finally:
        smtp_world.switch(world, domain, "valid")
    # A stronger result applies at once.
    probe(daemon, domain)
    assert daemon.postmap(domain) == [smtp_world.VERIFIED]


def test_switch_rejects_unknown_behaviour(world: World) -> None:
    with pytest.raises(ValueError, match="no behaviour"):
        smtp_world.switch(world, CASES["probe-damping"].domain, "nonsense")


# -- posttls-finger agrees -------------------------------------------------------------

FINGER_CASES = [n for n in STATIC if n != "probe-tarpit"]


def finger(world: World, host: str, level: str = "verify", *, sni: bool = True) -> str:
    """posttls-finger as Postfix's smtp would connect with policyd's answer: at ``level``,
    with ``servername=hostname`` (the SNI the probe sent) unless ``sni`` is false."""
    options = ["-s", host] if sni else []  # servername=hostname: SNI is the MX host name
    res = world.run(
        [
            *world.exec_prefix(),
            "posttls-finger",
            "-c",
            "-l",
            level,
            "-F",
            str(world.ca_file),
            "-o",
            "smtp_connect_timeout=5",
            *options,
            f"[{host}]",
        ],
        capture_output=True,
        text=True,
        timeout=FINGER_TIMEOUT,
        env=client_env(),
    )
    return str(res.stdout) + str(res.stderr)


@pytest.mark.parametrize("name", FINGER_CASES)
def test_posttls_finger_agrees(daemon: Daemon, world: World, name: str) -> None:
    case = CASES[name]
    verdicts = host_verdicts(explain(daemon, case.domain))
    for host in case.hosts:
        out = finger(world, host)
        verdict = verdicts[host]
        if verdict == "valid":
            assert "Verified TLS connection established" in out, out
        elif verdict in ("no-starttls", "tls-intolerant"):
            assert "TLS connection established" not in out, out
        elif verdict == "legacy-tls":
            # Postfix cannot even complete the handshake at verify, but does at encrypt.
            assert "TLS connection established" not in out, out
            assert "legacy sigalg" in out, out
            assert "TLS connection established" in finger(world, host, "encrypt"), out
        else:
            assert "Untrusted TLS connection established" in out, out
            assert "Verified TLS" not in out, out


def test_sni_only_server_verifies_only_with_the_servername_policyd_sends(
    daemon: Daemon, world: World
) -> None:
    # Without servername= Postfix sends no SNI and meets the default certificate: the
    # plain "verify" policyd answered before would have deferred this mail for good.
    (host,) = CASES["probe-sni"].hosts
    assert "Verified TLS connection established" in finger(world, host)
    without = finger(world, host, sni=False)
    assert "Verified TLS connection established" not in without, without
    assert "Untrusted TLS connection established" in without, without


def test_valid_destination_is_served_by_postfix(daemon: Daemon, world: World) -> None:
    # The probe of probe-valid.test met the real Postfix smtpd: its own log says so.
    maillog = (world.dir / "postfix-mx" / "maillog").read_text(errors="replace")
    assert "postfix/smtpd" in maillog
    # smtpd asks no client certificate: each STARTTLS session it logs is "Anonymous".
    assert "Anonymous TLS connection established from" in maillog, maillog[-2000:]


@pytest.mark.parametrize(
    "host", ["mx.probe-valid.test", "mx.dane-ee.test", "mx.probe-expired.test"]
)
def test_servers_accept_and_record_mail(world: World, host: str) -> None:
    # What the end-to-end delivery test relies on: mail over STARTTLS is recorded.
    before = len(smtp_world.received(world, host))
    ctx = ssl.create_default_context(cafile=str(world.ca_file))
    ctx.check_hostname = host != "mx.probe-expired.test"
    ctx.verify_mode = ssl.CERT_REQUIRED if ctx.check_hostname else ssl.CERT_NONE
    with smtplib.SMTP(local_hostname="client.test", timeout=10) as s:
        s.connect(world.hosts[host], 25)
        # smtplib's SNI and name check use the name it connected to: the host, not its address
        setattr(s, "_host", host)
        s.starttls(context=ctx)
        s.sendmail("a@client.test", [f"b@{host.split('.', 1)[1]}"], b"Subject: hi\r\n\r\nhi\r\n")
    got = smtp_world.received(world, host)
    assert len(got) == before + 1
    text = got[-1].read_text()
    assert "Subject: hi" in text
    if host == "mx.probe-valid.test":
        # Postfix took it over TLS (its Received header) and proxied it to the recorder
        assert "(Postfix) with ESMTPS" in text and "X-World-TLS: none" in text
    else:
        assert "X-World-TLS: TLSv1.3" in text
