"""The control server and policyctl together: a real PolicyService on fake sources, the real
ControlServer on a unix socket, driven by the real ``policyctl`` main()."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policyd import __version__
from policyd.adapters.store_sqlite import SqliteStore
from policyd.admin import Admin, Facts
from policyd.cli import policyctl, policyctl_render
from policyd.codec import control
from policyd.codec.control import evidence, results
from policyd.config import Config
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    MxKind,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
    StsEvidence,
    StsMode,
    StsPolicy,
    Tlsa,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.listeners import parse_listener
from policyd.server.control import ControlServer
from policyd.server.reply_cache import ReplyCache
from policyd.service import PolicyService
from policyd.settings import ControlSettings, ServerSettings, StoreSettings
from policyd.sources.fetch_queue import QueueStats
from policyd.sources.probe import ProbeStats
from tests import fakes

NOW = 1_700_000_000.0
LEAF = "9f" * 32
SPKI = "4b" * 32


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _dns(*hosts: MxHost, mx: DnsStatus = DnsStatus.SECURE) -> DnsEvidence:
    return DnsEvidence(mx, MxKind.LISTED, hosts, fetched_at=NOW - 180, expires_at=NOW + 3420)


WORLD: dict[str, DnsEvidence] = {
    "dane.example": _dns(
        MxHost(
            "mx1.dane.example",
            10,
            DnsStatus.SECURE,
            ("192.0.2.10", "2001:db8::10"),
            tlsa=DnsStatus.SECURE,
            tlsa_records=(Tlsa(3, 1, 1, bytes.fromhex(SPKI)),),
        )
    ),
    "sts.example": _dns(
        MxHost("mx.sts.example", 10, DnsStatus.INSECURE, ("192.0.2.20",)), mx=DnsStatus.INSECURE
    ),
    "probe.example": _dns(
        MxHost("mx.probe.example", 5, DnsStatus.INSECURE, ("192.0.2.30",)),
        mx=DnsStatus.INSECURE,
    ),
    "plain.example": _dns(
        MxHost("mx.plain.example", 10, DnsStatus.INSECURE, ("192.0.2.40",)),
        mx=DnsStatus.INSECURE,
    ),
}


class FakeDane:
    def __init__(self) -> None:
        self.world = dict(WORLD)

    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        if dest.name == "boom.example":
            raise RuntimeError("resolver exploded")
        return self.world.get(
            dest.name, DnsEvidence(DnsStatus.SECURE, MxKind.NXDOMAIN, fetched_at=now)
        )


class FakeSts:
    def __init__(self) -> None:
        self.evidence_by_domain = {
            "sts.example": StsEvidence(
                StsPolicy(StsMode.ENFORCE, ("mx.sts.example",), 604800, "20240501", NOW - 7200)
            ),
            "plain.example": StsEvidence(error="policy fetch: HTTP 404"),
        }
        self.forgotten: list[str] = []

    def cached(self, domain: str, now: float) -> StsEvidence:
        return self.evidence_by_domain.get(domain, StsEvidence())

    async def evidence(self, domain: str) -> StsEvidence:
        return self.cached(domain, NOW)

    def forget(self, domain: str | None) -> None:
        self.forgotten.append(domain or "*")

    def queue_stats(self) -> QueueStats:
        return QueueStats(running=0, queued=0, dropped=0, preempted=0)


def _valid(host: str, address: str, at: float) -> ProbeHost:
    return ProbeHost(
        host,
        address,
        ProbeVerdict.VALID,
        protocol="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        leaf_sha256=LEAF,
        spki_sha256=SPKI,
        probed_at=at,
    )


class FakeProbe(fakes.FakeProbe):
    """Probes on request (``probe_now``), never in the background (``want`` says no)."""

    def __init__(self) -> None:
        held = _valid("mx.probe.example", "192.0.2.30", NOW - 300)
        super().__init__(
            {
                "probe.example": ProbeState(
                    ProbeLevel.VERIFY,
                    (held,),
                    ("mx.probe.example",),
                    pending=ProbeLevel.ENCRYPT,
                    pending_count=1,
                    pending_since=NOW - 3600,
                    probed_at=NOW - 300,
                )
            }
        )
        self.probed: list[str] = []
        self.probed_one = asyncio.Event()  # set by the first probe

    def want(self, dest: Destination, dns: DnsEvidence) -> bool:
        return False

    async def probe_now(self, dest: Destination, dns: DnsEvidence) -> ProbeState:
        self.probed.append(dest.key)
        self.probed_one.set()
        hosts = tuple(_valid(h.name, a, NOW) for h in dns.hosts for a in h.addresses)
        state = ProbeState(
            ProbeLevel.VERIFY, hosts, tuple(h.name for h in dns.hosts), probed_at=NOW
        )
        self.states[dest.key] = state
        return state

    def stats(self) -> ProbeStats:
        return ProbeStats(
            queued=0, running=0, dropped=0, done=len(self.probed), known=len(self.states)
        )


@dataclass
class Listeners:
    connections: int = 2
    refused: int = 0


class Daemon:
    """What the control plane is given of the daemon: reload and DNS-cache clearing."""

    def __init__(self) -> None:
        self.reload_ok = True
        self.reloads = 0
        self.dns_clears = 0

    async def reload(self) -> bool:
        self.reloads += 1
        return self.reload_ok

    def clear_dns_cache(self) -> None:
        self.dns_clears += 1


@dataclass
class Env:
    path: str
    daemon: Daemon
    service: PolicyService
    clock: Clock
    probe: FakeProbe
    sts: FakeSts
    capsys: pytest.CaptureFixture[str]

    async def ctl(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(policyctl.main, ["--socket", self.path, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def ctl_json(self, *argv: str) -> object:
        code, out, err = await self.ctl(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


async def start_env(
    sock_dir: Path,
    capsys: pytest.CaptureFixture[str],
    control: ControlSettings,
    **limits: Any,  # ControlServer.of's max_connections and monotonic
) -> tuple[Env, ControlServer]:
    clock = Clock()
    store = await SqliteStore.open("sqlite://:memory:")
    probe, sts = FakeProbe(), FakeSts()
    service = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), sts, probe, lookup_budget=5.0, clock=clock
    )
    path = str(sock_dir / "control.sock")
    server_settings = ServerSettings(
        socketmap=(parse_listener("unix:/run/policyd/policyd.sock"),),
        control=parse_listener(f"unix:{path}"),
    )
    config = Config(
        server=server_settings, control=control, store=StoreSettings("sqlite://:memory:")
    )
    daemon = Daemon()
    loop = asyncio.get_running_loop()
    admin = Admin(
        service,
        dane=service.dane,
        sts=sts,
        probe=probe,
        events=store,
        reload=daemon.reload,
        clear_dns=daemon.clear_dns_cache,
        facts=Facts.of(config, loop.time() - 3725),
        listeners=Listeners(),
        clock=clock,
        monotonic=loop.time,
    )
    server = ControlServer.of(admin, config, lambda: config.control, **limits)
    try:
        await server.start()
    except OSError:
        await store.close()
        raise
    return Env(path, daemon, service, clock, probe, sts, capsys), server


@pytest.fixture
async def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Env]:
    e, server = await start_env(tmp_path, capsys, ControlSettings())
    yield e
    await server.close()
    await e.service.store.close()
    assert not os.path.exists(e.path)


async def lookup(service: PolicyService, key: str) -> bytes:
    return await ReplyCache(service).reply_for(f"postfix {key}".encode())


# -- explain ---------------------------------------------------------------------------


async def test_explain_dane(env: Env) -> None:
    code, out, err = await env.ctl("explain", "DANE.example.")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "dane.example: postfix -> dane-only; strict -> dane-only"
    assert lines[1] == "  postfix  OK dane-only"
    assert lines[2].startswith("           decided by dane: DANE: ")
    assert "DNS: MX listed, secure (DNSSEC-validated), fetched 3m ago, expires in 57m" in out
    assert "mx1.dane.example  addresses secure: 192.0.2.10, 2001:db8::10" in out
    assert f"3 1 1 {SPKI}  usable" in out
    assert "MTA-STS: no policy" in out
    assert "Probe: no probe results yet" in out
    assert "Override: none" in out


def _explained(
    dest: str, dns: evidence.DnsDoc | None = None, probe: evidence.ProbeDoc | None = None
) -> results.ExplainResult:
    return results.ExplainResult(dest, NOW, (), dns, evidence.StsDoc(None, "", False), probe, None)


def test_explain_failed_dns_does_not_read_as_found() -> None:
    dns = evidence.DnsDoc(DnsStatus.FAILED, MxKind.LISTED, "MX lookup: bogus", None, None, None, ())
    out = policyctl_render.explain(_explained("bogus.example", dns=dns))
    assert "DNS: MX lookup FAILED, fetched never\n  error: MX lookup: bogus\n" in out
    assert "listed" not in out


async def test_explain_json_has_the_evidence(env: Env) -> None:
    doc = await env.ctl_json("explain", "dane.example")
    assert isinstance(doc, dict)
    assert doc["destination"] == "dane.example"
    assert [a["profile"] for a in doc["answers"]] == ["postfix", "strict"]
    assert doc["answers"][0]["rule"] == "dane"
    assert doc["answers"][0]["reply"] == "OK dane-only"
    host = doc["dns"]["hosts"][0]
    assert host["tlsa"] == [{"usage": 3, "selector": 1, "mtype": 1, "data": SPKI, "usable": True}]
    assert host["tlsa_status"] == "secure"
    assert doc["dns"]["age"] == 180
    assert doc["override"] is None


async def test_explain_mta_sts(env: Env) -> None:
    code, out, _ = await env.ctl("explain", "sts.example")
    assert code == 0
    assert out.startswith("sts.example: postfix -> secure; strict -> secure\n")
    assert "  postfix  OK secure match=mx.sts.example servername=hostname\n" in out
    assert "decided by mta-sts" in out
    assert "MTA-STS: id=20240501 mode=enforce max_age=604800s (7d)" in out
    assert "mx: mx.sts.example" in out and "(2h ago)" in out
    assert "TLSA not looked up" in out


async def test_explain_probe_with_damping(env: Env) -> None:
    code, out, _ = await env.ctl("explain", "probe.example")
    assert code == 0
    assert "decided by probe" in out
    assert "Probe: level verify, probed 5m ago; verified names: mx.probe.example" in out
    assert "damping: HOLDING verify; weaker encrypt seen 1 time(s) since 1h ago" in out
    assert "mx.probe.example [192.0.2.30]: valid, TLSv1.3 TLS_AES_256_GCM_SHA384 (5m ago)" in out
    assert f"leaf sha256 {LEAF}" in out and f"spki sha256 {SPKI}" in out


async def test_explain_unknown_and_failing_sts(env: Env) -> None:
    code, out, _ = await env.ctl("explain", "plain.example")
    assert code == 0
    assert out.startswith("plain.example: postfix -> NOTFOUND; strict -> NOTFOUND")
    assert "decided by default" in out
    assert "last discovery/fetch FAILED: policy fetch: HTTP 404" in out


async def test_explain_nxdomain_and_parent_form(env: Env) -> None:
    code, out, _ = await env.ctl("explain", "nowhere.example")
    assert code == 0 and "decided by no-mail" in out
    code, out, _ = await env.ctl("explain", ".example.org")
    assert code == 0 and "DNS: not looked up" in out


# -- overrides ---------------------------------------------------------------------------


async def test_override_set_list_explain_del(env: Env) -> None:
    code, out, err = await env.ctl(
        "override", "set", "sts.example", "encrypt", "--expires", "30m", "--comment", "cert broken"
    )
    assert (code, err) == (0, "")
    assert "sts.example: encrypt" in out and "expires in 30m" in out
    assert "by root" in out and "comment: cert broken" in out
    assert env.service.overrides["sts.example"].author == "root"
    assert await lookup(env.service, "sts.example") == b"10:OK encrypt,"

    code, out, _ = await env.ctl("override", "list")
    assert code == 0 and "sts.example: encrypt" in out
    listed = await env.ctl_json("override", "list")
    assert isinstance(listed, dict)
    (ov,) = listed["overrides"]
    assert ov["policy"] == "encrypt" and ov["comment"] == "cert broken" and ov["active"]

    code, out, _ = await env.ctl("explain", "sts.example")
    assert "decided by override: override by root: cert broken" in out
    assert "Override:\n  sts.example: encrypt" in out

    # Expiry: 31 minutes later the override no longer applies.
    env.clock.now += 31 * 60
    doc = await env.ctl_json("explain", "sts.example")
    assert isinstance(doc, dict)
    assert doc["answers"][0]["rule"] == "mta-sts"
    env.clock.now = NOW

    code, out, _ = await env.ctl("override", "del", "sts.example")
    assert (code, out) == (0, "sts.example: override deleted\n")
    code, out, err = await env.ctl("override", "del", "sts.example")
    assert (code, out) == (1, "")
    assert err == "policyctl: no override for sts.example\n"
    code, out, _ = await env.ctl("override", "list")
    assert out == "no overrides\n"


async def test_override_policies_are_validated(env: Env) -> None:
    code, _, err = await env.ctl("override", "set", "a.example", "mandatory")
    assert code == 2 and "unknown TLS level" in err and err.count("\n") == 1
    code, _, err = await env.ctl("override", "set", "a.example", "encrypt", "match=x")
    assert code == 2 and "takes no match" in err
    code, _, err = await env.ctl("override", "set", "a b", "encrypt")
    assert code == 2
    code, _, err = await env.ctl("override", "set", "a.example", "may", "--expires", "soon")
    assert code == 2 and "bad duration" in err
    code, out, _ = await env.ctl(
        "override", "set", "[mx.a.example]:587", "fingerprint", f"match={LEAF[:8]}|{SPKI[:8]}"
    )
    assert code == 0 and f"fingerprint match={LEAF[:8]}|{SPKI[:8]}" in out
    assert env.service.overrides["[mx.a.example]:587"].expires_at is None


# -- probe, flush ---------------------------------------------------------------------------


async def test_probe_wait_shows_new_evidence(env: Env) -> None:
    code, out, err = await env.ctl("probe", "plain.example", "--wait")
    assert (code, err) == (0, "")
    assert env.probe.probed == ["plain.example"]
    assert out.startswith("plain.example: postfix -> verify")
    assert "mx.plain.example [192.0.2.40]: valid, TLSv1.3" in out


async def test_probe_without_wait_is_queued(env: Env) -> None:
    code, out, _ = await env.ctl("probe", "dane.example")
    assert code == 0 and "probe queued" in out
    async with asyncio.timeout(10):  # a guard, not a delay: the probe sets the event
        await env.probe.probed_one.wait()
    assert env.probe.probed == ["dane.example"]


async def test_probe_errors(env: Env) -> None:
    code, _, err = await env.ctl("probe", "nowhere.example", "--wait")
    assert code == 1 and "no MX host to probe" in err
    code, _, err = await env.ctl("probe", "[192.0.2.1]")
    assert code == 2 and "can be probed" in err


async def test_flush_one_and_all(env: Env) -> None:
    await lookup(env.service, "probe.example")
    code, out, _ = await env.ctl("flush", "probe.example")
    assert code == 0 and out.startswith("probe.example: cached evidence flushed")
    assert "probe.example" not in env.probe.states
    assert env.daemon.dns_clears == 1  # review D2: flush reaches the DNS cache
    assert env.sts.forgotten == []  # MTA-STS policies are trust on first use (review L7)
    await env.ctl("flush", "probe.example", "--include-mta-sts")
    assert env.sts.forgotten == ["probe.example"]
    env.service.overrides.clear()
    await env.ctl("override", "set", "dane.example", "may")
    doc = await env.ctl_json("flush", "--all")
    assert doc == {"destination": None, "records": 0, "mta_sts": False}
    assert "dane.example" in env.service.overrides  # flush never drops overrides
    code, _, _ = await env.ctl("flush")
    assert code == 2
    code, _, _ = await env.ctl("flush", "a.example", "--all")
    assert code == 2


# -- report, status, reload -------------------------------------------------------------------


async def _level_change(env: Env) -> None:
    assert b"NOTFOUND" in await lookup(env.service, "plain.example")
    await lookup(env.service, "dane.example")
    env.probe.states["plain.example"] = ProbeState(
        ProbeLevel.ENCRYPT,
        (ProbeHost("mx.plain.example", "192.0.2.40", ProbeVerdict.SELF_SIGNED, probed_at=NOW),),
        probed_at=NOW,
    )
    env.service.invalidate("plain.example")
    assert await lookup(env.service, "plain.example") == b"10:OK encrypt,"
    await env.service.writes.flush()  # the event is queued for the store


async def test_report_table(env: Env) -> None:
    await _level_change(env)
    await lookup(env.service, "probe.example")
    code, out, err = await env.ctl("report", "--since", "1h")
    assert (code, err) == (0, "")
    assert "Report since" in out and "(1h)" in out
    assert "Level changes: 4" in out
    assert "plain.example: NOTFOUND -> encrypt" in out
    assert "Destinations by level (profile postfix):" in out
    assert "dane-only" in out and "decided by: dane 1, probe 2" in out
    assert "Held by damping: 1\n  probe.example: holding verify, weaker encrypt" in out
    assert "Failing MTA-STS fetches: 1\n  plain.example: policy fetch: HTTP 404" in out


async def test_report_json_and_csv(env: Env) -> None:
    await _level_change(env)
    doc = await env.ctl_json("report")
    assert isinstance(doc, dict)
    change = doc["changes"][-1]
    assert change["destination"] == "plain.example"
    assert (change["previous"], change["level"]) == ("NOTFOUND", "encrypt")
    assert change["reason"]
    assert doc["levels"]["postfix"]["encrypt"] == ["plain.example"]
    assert doc["rules"]["postfix"] == {"dane": 1, "probe": 1}
    assert doc["temp"]["answers"] == 0
    code, out, _ = await env.ctl("report", "--format", "json")
    assert code == 0 and json.loads(out) == doc
    code, out, _ = await env.ctl("report", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["section", "at", "destination", "profile", "level", "previous", "detail"]
    assert ["level", "", "dane.example", "postfix", "dane-only", "", ""] in rows
    assert any(r[0] == "change" and r[5] == "NOTFOUND" for r in rows)
    assert any(r[0] == "sts-failing" for r in rows)
    code, _, err = await env.ctl("report", "--since", "5y")
    assert code == 2 and "bad duration" in err


async def test_status(env: Env) -> None:
    await lookup(env.service, "dane.example")
    code, out, _ = await env.ctl("status")
    assert code == 0
    assert f"version      policyd {__version__}" in out
    assert "uptime       1h2m" in out
    assert "store        sqlite" in out
    assert "probe queue  queued=0, running=0, dropped=0, done=0, known=1" in out
    assert "prefetches   started=0, skipped=0, failed=0" in out
    doc = await env.ctl_json("status")
    assert isinstance(doc, dict)
    assert doc["lookups"]["lookups"] == 1
    assert doc["cache"]["answers"] == 1
    assert doc["listeners"] == ["unix:/run/policyd/policyd.sock", f"unix:{env.path}"]


async def test_reload(env: Env) -> None:
    code, out, _ = await env.ctl("reload")
    assert (code, out) == (0, "configuration and overrides reloaded\n")
    env.daemon.reload_ok = False
    code, _, err = await env.ctl("reload")
    assert code == 1 and "reload failed" in err
    assert env.daemon.reloads == 2


# -- failures -------------------------------------------------------------------------------


async def test_unreachable_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(
        policyctl.main, ["--socket", str(tmp_path / "missing.sock"), "status"]
    )
    _, err = capsys.readouterr()
    assert code == 3
    assert err.startswith("policyctl: daemon unreachable at ") and err.count("\n") == 1
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "mute.sock"))
    listener.listen()
    policyctl_timeout = policyctl.REPLY_TIMEOUT
    try:
        policyctl.REPLY_TIMEOUT = 0.2  # type: ignore[misc]
        code = await asyncio.to_thread(
            policyctl.main, ["--socket", str(tmp_path / "mute.sock"), "status"]
        )
    finally:
        policyctl.REPLY_TIMEOUT = policyctl_timeout  # type: ignore[misc]
        listener.close()
    assert code == 3 and "no reply" in capsys.readouterr().err


async def test_usage_errors(env: Env) -> None:
    for argv in ([], ["frobnicate"], ["explain"], ["override"], ["report", "--format", "xml"]):
        code, out, err = await env.ctl(*argv)
        assert code == 2, argv
        assert out == "" and err.startswith("policyctl: ") and err.count("\n") == 1


async def test_internal_error_is_a_reply_not_a_crash(env: Env) -> None:
    code, _, err = await env.ctl("explain", "boom.example")
    assert code == 1 and "internal error" in err
    code, _, _ = await env.ctl("status")
    assert code == 0


def _raw_exchange(path: str, data: bytes) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


async def test_malformed_requests_get_error_replies(env: Env) -> None:
    good = control.encode_request(control.Status())
    lines = [
        b"not json\n",
        b"\xff\xfe\n",
        b'{"v": 9, "cmd": "status"}\n',
        b'{"v": 1, "cmd": "rm -rf"}\n',
        b'{"v": 1, "cmd": "explain", "args": {"domain": "../etc"}}\n',
        b"[]\n",
        good,
    ]
    replies = await asyncio.to_thread(_raw_exchange, env.path, b"".join(lines))
    assert [r["ok"] for r in replies] == [False] * 6 + [True]
    assert {r.get("code") for r in replies[:6]} == {"usage"}
    # One line over the limit: an error, then the server closes the connection.
    replies = await asyncio.to_thread(
        _raw_exchange, env.path, b"x" * (control.MAX_LINE + 10) + b"\n" + good
    )
    assert len(replies) == 1 and replies[0]["code"] == "usage"
    assert (await env.ctl("status"))[0] == 0  # the server still serves others


async def test_stale_socket_and_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    e, server = await start_env(tmp_path, capsys, ControlSettings(mode=0o640))
    assert oct(os.stat(e.path).st_mode & 0o777) == "0o640"
    await server.close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "control.sock").write_text("precious")
    with pytest.raises(OSError, match="not a socket"):
        await start_env(tmp_path / "other", capsys, ControlSettings())
    assert (tmp_path / "other" / "control.sock").read_text() == "precious"
    await e.service.store.close()


async def test_socket_from_config_file(env: Env, tmp_path: Path) -> None:
    config = pytest.importorskip("policyd.config", reason="policyd.config not importable yet")
    assert config.DEFAULT_CONFIG_PATH == policyctl.DEFAULT_CONFIG
    toml = tmp_path / "policyd.toml"
    toml.write_text(f'[server]\ncontrol = "unix:{env.path}"\n')
    env.capsys.readouterr()
    code = await asyncio.to_thread(policyctl.main, ["--config", str(toml), "status"])
    assert code == 0
    code = await asyncio.to_thread(policyctl.main, ["status", "--config", str(tmp_path / "no")])
    assert code == 3 and "cannot find the control socket" in env.capsys.readouterr().err


# -- peer credentials ---------------------------------------------------------------------------


def _nobody_python() -> list[str] | None:
    """An interpreter user nobody can run, with policyd and its dependencies importable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    repo = str(Path(__file__).resolve().parents[3])
    site = [p for p in sys.path if p.endswith("site-packages")]
    for python in (sys.executable, "/usr/bin/python3"):
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env"]
        cmd += [f"PYTHONPATH={':'.join([repo, *site])}", python]
        probe = [*cmd, "-c", "import policyd.cli.policyctl"]

        if subprocess.run(probe, capture_output=True, cwd="/", check=False).returncode == 0:
            return cmd
    return None


async def test_peer_credentials_refuse_nobody(capsys: pytest.CaptureFixture[str]) -> None:
    python = await asyncio.to_thread(_nobody_python)
    if python is None:
        print("skipping: needs root, setpriv and a python that user nobody can run")
        pytest.skip("needs root, setpriv and a python that user nobody can run")
    # /tmp/pytest-of-root is 0700: nobody needs a directory it can enter.
    sock_dir = Path(tempfile.mkdtemp(prefix="policyctl-", dir="/tmp"))
    sock_dir.chmod(0o755)
    # Mode 0666 so the refusal comes from SO_PEERCRED, not from file permissions.
    e, server = await start_env(sock_dir, capsys, ControlSettings(mode=0o666, read_group="nogroup"))
    try:

        async def as_nobody(*argv: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                *python,
                "-m",
                "policyd.cli.policyctl",
                "--socket",
                e.path,
                *argv,
                cwd="/",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await as_nobody("override", "set", "dane.example", "none")
        assert code == 1, err
        assert "override-set: user nobody may not make changes" in err
        assert "dane.example" not in e.service.overrides
        for argv in (("flush", "--all"), ("reload",), ("probe", "dane.example")):
            code, _, err = await as_nobody(*argv)
            assert code == 1 and "may not make changes" in err, argv
        assert e.daemon.reloads == 0 and e.probe.probed == []
        # nobody's primary group is the read group: queries are allowed.
        code, out, err = await as_nobody("status")
        assert code == 0, err
        assert "policyd" in out
        code, out, err = await as_nobody("explain", "dane.example")
        assert code == 0 and "dane-only" in out
    finally:
        await server.close()
        await e.service.store.close()
    # Without the read group, nobody may not even query.
    e, server = await start_env(sock_dir, capsys, ControlSettings(mode=0o666))
    try:
        proc = await asyncio.create_subprocess_exec(
            *python,
            "-m",
            "policyd.cli.policyctl",
            "--socket",
            e.path,
            "status",
            cwd="/",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err_b = await proc.communicate()
        assert proc.returncode == 1 and b"may not make queries" in err_b
    finally:
        await server.close()
        await e.service.store.close()
        shutil.rmtree(sock_dir)


def test_explain_shows_held_verified_names() -> None:
    damping = evidence.DampingDoc(
        ProbeLevel.VERIFY, ProbeLevel.VERIFY, ("mx.forged.test",), 1, NOW - 3600, 3600
    )
    probe = evidence.ProbeDoc(ProbeLevel.VERIFY, ("mx.example.test",), NOW - 60, 60, damping, ())
    out = policyctl_render.explain(_explained("example.test", probe=probe))
    assert (
        "damping: HOLDING verified names; other names mx.forged.test seen 1 time(s)"
        " since 1h ago, not yet confirmed"
    ) in out
