"""policyctl doctor's pure parts: reading smtp_tls_policy_maps, versions, the chroot view,
the output. The checks themselves run against real Postfix configuration directories in
tests/integration/test_doctor.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

from policyd.adapters.hostaddr import resolv_conf_nameservers
from policyd.cli.doctor import _in_chroot, parse_tables, render, version_tuple
from policyd.cli.doctor_checks import Check, Status
from policyd.config import Listener, ListenerKind


def test_parse_tables_finds_socketmap_tables_only() -> None:
    value = (
        "hash:/etc/postfix/tls_policy, socketmap:unix:/run/policyd/policyd.sock:postfix "
        "socketmap:inet:127.0.0.1:8461:strict,socketmap:inet:[::1]:8461:postfix "
        "socketmap:bogus socketmap:inet:nohost:x:postfix"
    )
    got = [(t.listener, t.profile) for t in parse_tables(value)]
    assert got == [
        (Listener(ListenerKind.UNIX, path="/run/policyd/policyd.sock"), "postfix"),
        (Listener(ListenerKind.INET, host="127.0.0.1", port=8461), "strict"),
        (Listener(ListenerKind.INET, host="::1", port=8461), "postfix"),
    ]


def test_version_tuple() -> None:
    assert version_tuple("3.7.11") == (3, 7)
    assert version_tuple("3.10-20250101") == (3, 10)
    assert version_tuple("garbage") == (0, 0)


def test_chroot_view() -> None:
    assert _in_chroot("/var/spool/postfix/", "/policyd/policyd.sock") == (
        "/var/spool/postfix/policyd/policyd.sock"
    )


def test_render_lines_and_exit_status() -> None:
    checks = [
        Check("a", Status.OK, "fine", "never shown"),
        Check("b", Status.WARN, "hmm", "look"),
    ]
    out = io.StringIO()
    assert render(checks, out, as_json=False) == 0
    assert out.getvalue() == "OK   a: fine\nWARN b: hmm -> look\n"
    checks.append(Check("c", Status.FAIL, "broken", "fix it"))
    out = io.StringIO()
    assert render(checks, out, as_json=True) == 1
    doc = json.loads(out.getvalue())
    assert doc["ok"] is False
    assert doc["checks"][2] == {"check": "c", "status": "fail", "detail": "broken", "fix": "fix it"}


def test_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# x\nnameserver 127.0.0.1\nsearch example\nnameserver ::1\nnameserver\n")
    assert resolv_conf_nameservers(str(path)) == ["127.0.0.1", "::1"]
    assert resolv_conf_nameservers(str(path) + ".missing") == []
