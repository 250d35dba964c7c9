"""``policyctl`` against the real daemon in the test world.

policyctl runs as a real subprocess (``python -m policyd.cli.policyctl``) and talks to the
control socket of a real ``policyd``, whose resolver is the world's validating unbound; the
answers are checked with Postfix's own ``postmap``. DANE, unknown and failing destinations
are covered here; explain of MTA-STS and probed destinations lives with those worlds
(tests/integration/test_mtasts.py, tests/integration/test_probe.py).

One daemon serves the module. Each test uses its own destinations and removes the overrides
it sets, so the tests do not depend on their order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from policyd import __version__
from policyd.codec import control
from tests.daemon import Daemon, base_sections
from tests.world.world import World

pytestmark = pytest.mark.integration

CTL_TIMEOUT: Final = 60.0  # seconds for one policyctl run
NOBODY: Final = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def one_line_error(self) -> bool:
        return self.out == "" and self.err.startswith("policyctl: ") and self.err.count("\n") == 1


def run_ctl(*argv: str, prefix: tuple[str, ...] = (sys.executable,), cwd: str | None = None) -> Run:
    res = subprocess.run(
        [*prefix, "-m", "policyd.cli.policyctl", *argv],
        capture_output=True,
        text=True,
        timeout=CTL_TIMEOUT,
        check=False,
        cwd=cwd,
    )
    return Run(res.returncode, res.stdout, res.stderr)


def ctl(daemon: Daemon, *argv: str) -> Run:
    return run_ctl("--socket", daemon.control, *argv)


def ok(daemon: Daemon, *argv: str) -> Run:
    run = ctl(daemon, *argv)
    assert run.code == 0, (argv, run.err, daemon.log()[-3000:])
    assert run.err == ""
    return run


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[Daemon]:
    # Not under /tmp/pytest-of-root (0700): user nobody must reach the control socket.
    directory = Path(tempfile.mkdtemp(prefix="policyctl-", dir="/tmp"))
    directory.chmod(0o755)
    sections = base_sections(directory, world.resolver)
    # No probes: the answers come from DNS evidence and overrides alone.
    sections["probe"] = {"enabled": False}
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": 1.0}
    # Mode 0666: for user nobody the refusal must come from SO_PEERCRED, not the file mode.
    sections["control"] = {"mode": "0666"}
    d = Daemon(directory, sections)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(directory, ignore_errors=True)


def overrides(daemon: Daemon) -> dict[str, Any]:
    doc = ok(daemon, "override", "list", "--json").json()
    return {ov["destination"]: ov for ov in doc["overrides"]}


# -- overrides ---------------------------------------------------------------------------


def test_override_applies_at_once_on_every_listener(daemon: Daemon) -> None:
    domain = "insecure.test"
    # Looked up first: the cached NOTFOUND must not outlive the override.
    assert daemon.postmap(domain) == ["NOTFOUND"]
    assert daemon.postmap(domain, tcp=True) == ["NOTFOUND"]
    run = ok(daemon, "override", "set", domain, "encrypt", "--comment", "peer wants TLS")
    assert run.out.splitlines() == [
        "override set:",
        f"  {domain}: encrypt",
        "      by root 0s ago, never expires",
        "      comment: peer wants TLS",
    ]
    try:
        # No reload, no restart: the very next lookups see it, on every listener and
        # for every profile.
        assert daemon.postmap(domain) == ["encrypt"]
        assert daemon.postmap(domain, tcp=True) == ["encrypt"]
        assert daemon.postmap(domain, name="strict") == ["encrypt"]
        # A full policy with attributes, replacing the first one.
        ok(daemon, "override", "set", domain, "secure", "match=.insecure.test:mx.example.net")
        assert daemon.postmap(domain) == ["secure match=.insecure.test:mx.example.net"]
        assert daemon.postmap(domain, tcp=True) == ["secure match=.insecure.test:mx.example.net"]
        listed = ok(daemon, "override", "list").out
        assert f"  {domain}: secure match=.insecure.test:mx.example.net\n" in listed
        assert "      by root " in listed
        ov = overrides(daemon)[domain]
        assert ov["policy"] == "secure match=.insecure.test:mx.example.net"
        assert ov["author"] == "root" and ov["active"] is True
        assert ov["expires_at"] is None and ov["expires_in"] is None
        assert ov["created_at"] == pytest.approx(time.time(), abs=30)
    finally:
        run = ok(daemon, "override", "del", domain)
    assert run.out == f"{domain}: override deleted\n"
    assert daemon.postmap(domain) == ["NOTFOUND"]
    assert daemon.postmap(domain, tcp=True) == ["NOTFOUND"]
    assert domain not in overrides(daemon)
    # Deleting it again: not found, exit 1, one line.
    run = ctl(daemon, "override", "del", domain)
    assert run.code == 1 and run.one_line_error
    assert f"no override for {domain}" in run.err


def test_override_list_empty_and_json(daemon: Daemon) -> None:
    for domain in list(overrides(daemon)):
        ok(daemon, "override", "del", domain)
    assert ok(daemon, "override", "list").out == "no overrides\n"
    assert ok(daemon, "override", "list", "--json").json() == {"overrides": []}
    # --json before the subcommand works as well as after it.
    assert json.loads(ok(daemon, "--json", "override", "list").out) == {"overrides": []}


def test_override_expires(daemon: Daemon) -> None:
    domain = "nullmx.test"
    assert daemon.postmap(domain) == ["NOTFOUND"]
    # The shortest duration the CLI accepts is 1s; 2s leaves time for the first lookup.
    before = time.time()
    ok(daemon, "override", "set", domain, "encrypt", "--expires", "2s")
    try:
        ov = overrides(daemon)[domain]
        assert before + 2 <= ov["expires_at"] <= time.time() + 2
        assert 0 < ov["expires_in"] <= 2
        assert ov["active"] is True
        assert daemon.postmap(domain) == ["encrypt"]
        deadline = ov["expires_at"] + 5
        while daemon.postmap(domain) != ["NOTFOUND"]:
            assert time.time() < deadline, "the override did not expire"
            time.sleep(0.2)
        # Expired at once for lookups; the list shows it as such until housekeeping drops it.
        listed = overrides(daemon)
        assert domain not in listed or listed[domain]["active"] is False
        explained = ok(daemon, "explain", domain, "--json").json()
        assert explained["override"] is None
        assert {a["reply"] for a in explained["answers"]} == {"NOTFOUND"}
    finally:
        ctl(daemon, "override", "del", domain)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x.test", "bogus"], "bad policy 'bogus'"),
        (["x.test", "secure", "match="], "bad policy"),
        (["x.test", "fingerprint", "match=zz"], "bad policy"),
        (["x.test", "encrypt", "--expires", "0s"], "duration '0s' out of range"),
        (["x.test", "encrypt", "--expires", "soon"], "bad duration"),
        (["bad domain!", "encrypt"], "bad destination"),
        (["x.test", "encrypt", "--comment", "two\nlines"], "comment"),
    ],
)
def test_invalid_override_is_a_usage_error(daemon: Daemon, argv: list[str], message: str) -> None:
    run = ctl(daemon, "override", "set", *argv)
    assert run.code == 2, run
    assert run.one_line_error, run
    assert message in run.err
    assert "x.test" not in overrides(daemon)


def test_override_survives_restart(daemon: Daemon) -> None:
    domain = "unsignedmx.test"
    assert daemon.postmap(domain) == ["dane"]
    ok(daemon, "override", "set", domain, "verify", "match=hostname", "--comment", "ticket 42")
    try:
        before = overrides(daemon)[domain]
        daemon.restart()
        after = overrides(daemon)[domain]
        assert after["policy"] == "verify match=hostname"
        for field in ("author", "comment", "created_at", "expires_at"):
            assert after[field] == before[field], field
        assert daemon.postmap(domain) == ["verify match=hostname"]
        assert daemon.postmap(domain, tcp=True) == ["verify match=hostname"]
    finally:
        ok(daemon, "override", "del", domain)
    assert daemon.postmap(domain) == ["dane"]


# -- explain -----------------------------------------------------------------------------


def test_explain_dane(daemon: Daemon) -> None:
    out = ok(daemon, "explain", "dane-ee.test").out
    lines = out.splitlines()
    assert lines[0] == "dane-ee.test: postfix -> dane-only; strict -> dane-only"
    assert "  postfix  OK dane-only" in lines
    assert "  strict   OK dane-only" in lines
    reason = "decided by dane: DANE: signed MX, usable TLSA at every MX host (mx.dane-ee.test)"
    assert sum(line.strip() == reason for line in lines) == 2
    assert any(
        line.startswith("DNS: MX listed, secure (DNSSEC-validated), fetched ") for line in lines
    )
    assert "     10 mx.dane-ee.test  addresses secure: 127.0.1.1" in lines
    assert "  mx.dane-ee.test: TLSA secure, 1 record(s)" in lines
    tlsa = [line.split() for line in lines if line.startswith("      3 1 1 ")]
    assert len(tlsa) == 1 and len(tlsa[0][3]) == 64 and tlsa[0][4:] == ["usable"]
    assert "MTA-STS: no policy" in lines
    assert "Probe: no probe results yet" in lines
    assert "Override: none" in lines

    doc = ok(daemon, "explain", "--json", "dane-ee.test").json()
    assert doc["destination"] == "dane-ee.test"
    assert [(a["profile"], a["reply"], a["rule"]) for a in doc["answers"]] == [
        ("postfix", "OK dane-only", "dane"),
        ("strict", "OK dane-only", "dane"),
    ]
    dns = doc["dns"]
    assert (dns["mx_status"], dns["kind"], dns["error"]) == ("secure", "listed", "")
    assert 0 <= dns["age"] < 60 and dns["expires_at"] > doc["now"]
    [host] = dns["hosts"]
    assert host["name"] == "mx.dane-ee.test" and host["preference"] == 10
    assert host["address_status"] == "secure" and host["addresses"] == ["127.0.1.1"]
    assert host["tlsa_status"] == "secure"
    [record] = host["tlsa"]
    assert (record["usage"], record["selector"], record["mtype"], record["usable"]) == (
        3,
        1,
        1,
        True,
    )
    assert record["data"] == tlsa[0][3]
    assert doc["override"] is None and doc["probe"] is None
    assert doc["mta_sts"]["policy"] is None
    # What explain shows is what Postfix gets.
    assert daemon.postmap("dane-ee.test") == ["dane-only"]


def test_explain_nonexistent(daemon: Daemon) -> None:
    lines = ok(daemon, "explain", "nonexistent.test").out.splitlines()
    assert lines[0] == "nonexistent.test: postfix -> NOTFOUND; strict -> NOTFOUND"
    assert "  postfix  NOTFOUND" in lines
    assert any("decided by no-mail: domain does not exist (NXDOMAIN)" in line for line in lines)
    assert any(line.startswith("DNS: MX nxdomain, secure (DNSSEC-validated)") for line in lines)
    assert "DANE: no MX hosts" in lines
    doc = ok(daemon, "explain", "nonexistent.test", "--json").json()
    assert {a["reply"] for a in doc["answers"]} == {"NOTFOUND"}
    assert {a["rule"] for a in doc["answers"]} == {"no-mail"}
    assert (doc["dns"]["kind"], doc["dns"]["mx_status"], doc["dns"]["hosts"]) == (
        "nxdomain",
        "secure",
        [],
    )
    assert daemon.postmap("nonexistent.test") == ["NOTFOUND"]


def test_explain_plain(daemon: Daemon) -> None:
    lines = ok(daemon, "explain", "plain.test").out.splitlines()
    assert lines[0] == "plain.test: postfix -> NOTFOUND; strict -> NOTFOUND"
    assert any("decided by default: no DANE, MTA-STS or probe evidence" in x for x in lines)
    assert any(line.startswith("DNS: MX listed, secure (DNSSEC-validated)") for line in lines)
    assert "     10 mx.plain.test  addresses secure: 127.0.1.15" in lines
    assert "  mx.plain.test: TLSA secure, no records" in lines
    doc = ok(daemon, "explain", "plain.test", "--json").json()
    assert [(a["profile"], a["reply"], a["rule"]) for a in doc["answers"]] == [
        ("postfix", "NOTFOUND", "default"),
        ("strict", "NOTFOUND", "default"),
    ]
    [host] = doc["dns"]["hosts"]
    assert (host["name"], host["tlsa_status"], host["tlsa"]) == ("mx.plain.test", "secure", [])


def test_explain_bogus_shows_the_failure_and_temp(daemon: Daemon) -> None:
    lines = ok(daemon, "explain", "bogus.test").out.splitlines()
    assert lines[0] == "bogus.test: postfix -> TEMP; strict -> TEMP"
    assert any(line.startswith("  postfix  TEMP MX lookup for bogus.test: bogus") for line in lines)
    assert any("decided by dns-failure: MX lookup for bogus.test: bogus" in x for x in lines)
    assert any(line.startswith("DNS: MX lookup FAILED") for line in lines), lines
    assert any(line.startswith("  error: MX lookup for bogus.test: bogus") for line in lines)
    doc = ok(daemon, "explain", "--json", "bogus.test").json()
    assert {a["level"] for a in doc["answers"]} == {"TEMP"}
    assert {a["rule"] for a in doc["answers"]} == {"dns-failure"}
    assert doc["dns"]["mx_status"] == "failed" and "bogus" in doc["dns"]["error"]
    assert daemon.postmap("bogus.test")[0].startswith("ERROR")


def test_explain_shows_an_override(daemon: Daemon) -> None:
    domain = "implicit.test"
    # 1h30s: shown as "expires in 1h" however long the next policyctl takes to start on a
    # loaded machine (up to 30 s); a plain 1h read "59m" once half a second had passed.
    ok(daemon, "override", "set", domain, "may", "--comment", "broken peer", "--expires", "1h30s")
    try:
        lines = ok(daemon, "explain", domain).out.splitlines()
        assert lines[0] == f"{domain}: postfix -> may; strict -> may"
        assert any("decided by override: override by root: broken peer" in x for x in lines)
        at = lines.index("Override:")
        assert lines[at + 1] == f"  {domain}: may"
        assert lines[at + 2].startswith("      by root ") and "expires in 1h" in lines[at + 2]
        assert lines[at + 3] == "      comment: broken peer"
        # The evidence under the override is still shown: the DANE the override hides.
        assert f"  {domain}: TLSA secure, 1 record(s)" in lines
    finally:
        ok(daemon, "override", "del", domain)


def test_explain_bad_destination_is_usage(daemon: Daemon) -> None:
    run = ctl(daemon, "explain", "not a domain")
    assert run.code == 2 and run.one_line_error and "bad destination" in run.err


# -- flush, report, status, reload -------------------------------------------------------


def test_flush_keeps_overrides(daemon: Daemon) -> None:
    domain = "dane-partial.test"
    assert daemon.postmap(domain) == ["dane"]
    ok(daemon, "override", "set", domain, "encrypt")
    try:
        assert ok(daemon, "flush", "dane-ee.test").out.startswith(
            "dane-ee.test: cached evidence flushed ("
        )
        assert ok(daemon, "flush", domain, "--json").json()["destination"] == domain
        assert domain in overrides(daemon)
        assert daemon.postmap(domain) == ["encrypt"]
        run = ok(daemon, "flush", "--all")
        assert run.out.startswith("all destinations: cached evidence flushed (")
        assert domain in overrides(daemon)
        assert daemon.postmap(domain) == ["encrypt"]
        assert daemon.postmap(domain, tcp=True) == ["encrypt"]
    finally:
        ok(daemon, "override", "del", domain)
    # The next lookups start fresh and find the same evidence again.
    assert daemon.postmap(domain) == ["dane"]
    assert daemon.postmap("dane-ee.test") == ["dane-only"]
    run = ctl(daemon, "flush")
    assert run.code == 2 and run.one_line_error


def test_report_after_a_level_change(daemon: Daemon) -> None:
    domain = "dane-ta.test"
    start = time.time()
    assert daemon.postmap(domain) == ["dane-only"]
    ok(daemon, "override", "set", domain, "may", "--comment", "tlsa rollover")
    try:
        assert daemon.postmap(domain) == ["may"]

        def changes() -> list[dict[str, Any]]:
            doc = ok(daemon, "report", "--since", "1h", "--format", "json").json()
            assert doc["now"] - doc["since"] == pytest.approx(3600)
            found: list[dict[str, Any]] = [
                c for c in doc["changes"] if c["destination"] == domain and c["at"] >= start - 1
            ]
            return found

        # The events are written in the background: wait for the second one.
        deadline = time.monotonic() + 10
        while len(found := changes()) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
        change = found[-1]
        assert (change["profile"], change["previous"], change["level"]) == (
            "postfix",
            "dane-only",
            "may",
        )
        assert change["reason"] == "override by root: tlsa rollover"
        assert found[-2]["level"] == "dane-only"
        doc = ok(daemon, "report", "--format", "json").json()
        assert domain in doc["levels"]["postfix"]["may"]
        assert doc["rules"]["postfix"]["override"] >= 1

        table = ok(daemon, "report", "--since", "1h").out
        assert table.startswith("Report since ")
        assert f"{domain}: dane-only -> may  (override by root: tlsa rollover)" in table
        assert "Destinations by level (profile postfix):" in table

        rows = list(csv.DictReader(io.StringIO(ok(daemon, "report", "--format", "csv").out)))
        assert {
            (r["section"], r["profile"], r["previous"], r["level"], r["detail"])
            for r in rows
            if r["destination"] == domain
        } >= {
            ("change", "postfix", "dane-only", "may", "override by root: tlsa rollover"),
            ("level", "postfix", "", "may", ""),
        }
    finally:
        ok(daemon, "override", "del", domain)
    run = ctl(daemon, "report", "--since", "yesterday")
    assert run.code == 2 and run.one_line_error


def test_status(daemon: Daemon) -> None:
    before = ok(daemon, "status", "--json").json()
    daemon.postmap("dane-ee.test", "plain.test")
    doc = ok(daemon, "status", "--json").json()
    assert doc["version"] == __version__
    assert doc["listeners"] == [
        f"unix:{daemon.socket}",
        f"inet:127.0.0.1:{daemon.tcp_port}",
        f"unix:{daemon.control}",
    ]
    assert doc["store"] == "sqlite"
    served = doc["lookups"]["lookups"] + doc["lookups"]["hits"]
    assert served >= before["lookups"]["lookups"] + before["lookups"]["hits"] + 2
    assert doc["uptime"] >= before["uptime"]
    lines = ok(daemon, "status").out.splitlines()
    assert lines[0] == f"version      policyd {__version__}"
    assert any(line.startswith("uptime       ") for line in lines)
    listeners = next(line for line in lines if line.startswith("listeners"))
    assert daemon.socket in listeners and f"inet:127.0.0.1:{daemon.tcp_port}" in listeners
    lookups = next(line for line in lines if line.startswith("lookups"))
    assert " served from the slow path, " in lookups and " cache hits" in lookups


def test_socket_from_config(daemon: Daemon) -> None:
    run = run_ctl("--config", str(daemon.config_path), "status", "--json")
    assert run.code == 0, run.err
    assert f"unix:{daemon.control}" in run.json()["listeners"]
    run = run_ctl("explain", "dane-ee.test", "--config", str(daemon.config_path))
    assert run.code == 0 and run.out.startswith("dane-ee.test: postfix -> dane-only")


def test_reload(daemon: Daemon) -> None:
    assert ok(daemon, "reload").out == "configuration and overrides reloaded\n"
    assert daemon.postmap("dane-ee.test") == ["dane-only"]
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good + "\n[log]\nlevel = 'loud'\n")
    try:
        run = ctl(daemon, "reload")
        assert run.code == 1 and run.one_line_error
        assert "reload failed, old configuration kept" in run.err
    finally:
        daemon.config_path.write_text(good)
    # The old configuration still serves, and a good reload works again.
    assert daemon.postmap("dane-ee.test", tcp=True) == ["dane-only"]
    ok(daemon, "reload")
    assert daemon.proc is not None and daemon.proc.poll() is None


# -- failures: unreachable, refused, malformed -------------------------------------------


def test_daemon_unreachable(daemon: Daemon, tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.sock")
    run = run_ctl("--socket", missing, "status")
    assert run.code == 3 and run.one_line_error
    assert f"daemon unreachable at {missing}" in run.err
    # A socket file nobody listens on (a daemon that died): refused, also 3.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    run = run_ctl("--socket", str(stale), "override", "set", "x.test", "encrypt")
    assert run.code == 3 and run.one_line_error and "daemon unreachable" in run.err
    # A config whose control socket does not exist, and a config that does not exist.
    toml = tmp_path / "policyd.toml"
    toml.write_text(f'[server]\ncontrol = "unix:{missing}"\n')
    run = run_ctl("--config", str(toml), "explain", "dane-ee.test")
    assert run.code == 3 and run.one_line_error and "daemon unreachable" in run.err
    run = run_ctl("--config", str(tmp_path / "none.toml"), "status")
    assert run.code == 3 and run.one_line_error and "cannot find the control socket" in run.err


def nobody_python() -> tuple[str, ...] | None:
    """A command prefix running a python as user nobody that can import policyd.

    The venv's interpreter may live under /root (unreadable to nobody): then the system
    python of the same version runs with the repository and the venv's site-packages on
    PYTHONPATH.
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    repo = str(Path(__file__).resolve().parents[2])
    site = [p for p in sys.path if p.endswith("site-packages")]
    for python in (sys.executable, "/usr/bin/python3"):
        prefix = (*NOBODY, "env", f"PYTHONPATH={':'.join([repo, *site])}", python)
        res = subprocess.run(
            [*prefix, "-c", "import policyd.cli.policyctl"],
            capture_output=True,
            cwd="/",
            check=False,
        )
        if res.returncode == 0:
            return prefix
    return None


def test_non_member_refused(daemon: Daemon) -> None:
    prefix = nobody_python()
    if prefix is None:
        pytest.skip("needs root, setpriv and a python that user nobody can run")
    assert os.stat(daemon.control).st_mode & 0o777 == 0o666

    def as_nobody(*argv: str) -> Run:
        return run_ctl("--socket", daemon.control, *argv, prefix=prefix, cwd="/")

    # No read_group: nobody may neither change nor query.
    run = as_nobody("override", "set", "plain.test", "none")
    assert run.code == 1 and run.one_line_error, run
    assert "override-set: user nobody may not make changes" in run.err
    assert "plain.test" not in overrides(daemon)
    for argv in (("status",), ("explain", "dane-ee.test"), ("override", "list")):
        run = as_nobody(*argv)
        assert run.code == 1 and run.one_line_error and "may not make queries" in run.err, argv
    # read_group = nobody's group, applied by a reload: queries now work, changes do not.
    daemon.sections["control"]["read_group"] = "nogroup"
    daemon.write_config()
    try:
        ok(daemon, "reload")
        run = as_nobody("status")
        assert run.code == 0 and run.out.startswith("version      policyd "), run
        run = as_nobody("explain", "dane-ee.test")
        assert run.code == 0 and run.out.startswith("dane-ee.test: postfix -> dane-only"), run
        assert as_nobody("report", "--format", "json").code == 0
        writes: list[list[str]] = [
            ["override", "set", "plain.test", "none"],
            ["override", "del", "plain.test"],
            ["flush", "--all"],
            ["reload"],
        ]
        for write in writes:
            run = as_nobody(*write)
            assert run.code == 1 and run.one_line_error and "may not make changes" in run.err
        assert "plain.test" not in overrides(daemon)
    finally:
        del daemon.sections["control"]["read_group"]
        daemon.write_config()
        ok(daemon, "reload")
    assert "control nobody(uid=" in daemon.log() and "refused override-set" in daemon.log()


def raw_exchange(path: str, data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Send bytes on one control connection; the replies, and whether the daemon closed it
    (rather than waiting for more after the last reply)."""
    replies: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        # Closed on us mid-send: what was answered is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        buf = b""
        s.settimeout(2)
        closed = False
        try:
            while chunk := s.recv(65536):
                buf += chunk
            closed = True
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
    for line in buf.splitlines():
        replies.append(json.loads(line))
    return replies, closed


def test_malformed_requests(daemon: Daemon) -> None:
    status = control.encode_request(control.Status())
    bad = [
        b"not json at all\n",
        b"\xff\xfe\x00\n",
        b'{"v": 99, "cmd": "status"}\n',
        b'{"cmd": "status"}\n',
        b'{"v": 1, "cmd": "rm -rf /"}\n',
        b'{"v": 1, "cmd": "explain", "args": {"domain": "../../etc/passwd"}}\n',
        b'{"v": 1, "cmd": "override-set", "args": {"domain": "x.test", "policy": "bogus"}}\n',
        b"[1, 2, 3]\n",
        b"\n",
    ]
    replies, _ = raw_exchange(daemon.control, b"".join(bad) + status)
    assert len(replies) == len(bad) + 1, replies
    for reply in replies[:-1]:
        assert reply["v"] == control.VERSION and reply["ok"] is False
        assert reply["code"] == "usage" and reply["error"]
    assert replies[-1]["ok"] is True and replies[-1]["result"]["version"] == __version__
    assert "x.test" not in overrides(daemon)

    # A line over the limit: one error reply, then the daemon closes the connection.
    replies, closed = raw_exchange(daemon.control, b"x" * (control.MAX_LINE + 10) + b"\n" + status)
    assert closed
    assert len(replies) == 1 and replies[0]["ok"] is False and replies[0]["code"] == "usage"
    # Half a request, then the peer goes away.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.control)
        s.sendall(b'{"v": 1, "cmd": "sta')

    # The daemon keeps answering, on the control socket and on the socketmap listeners.
    assert ok(daemon, "status").out.startswith("version")
    assert daemon.postmap("dane-ee.test") == ["dane-only"]
    assert daemon.postmap("dane-ee.test", tcp=True) == ["dane-only"]
    assert daemon.proc is not None and daemon.proc.poll() is None
