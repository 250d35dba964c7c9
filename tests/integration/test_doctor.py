"""``policyctl doctor`` against a Postfix configuration directory each test writes, a real
daemon, and the world's resolvers: each misconfiguration doctor checks is made here and
must be found, and a good installation must pass (exit 0)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.daemon import Daemon, base_sections, render_toml
from tests.world.world import World

pytestmark = pytest.mark.integration

DOCTOR_TIMEOUT: Final = 120.0
MASTER_CF_PLAIN: Final = "smtp      unix  -       -       n       -       -       smtp\n"
MASTER_CF_CHROOT: Final = "smtp      unix  -       -       y       -       -       smtp\n"


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[Daemon]:
    # Under a directory the postfix user may enter (pytest's tmp dirs are root's, 0700).
    directory = Path(tempfile.mkdtemp(prefix="policyd-doctor-"))
    directory.chmod(0o755)
    sections = base_sections(directory, world.resolver)
    sections["probe"] = {"enabled": False}
    d = Daemon(directory, sections)
    d.start()
    yield d
    d.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory other users may enter (the postfix user connects from inside it)."""
    directory = Path(tempfile.mkdtemp(prefix="policyd-doctor-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def good_main_cf(daemon: Daemon, queue_directory: Path) -> dict[str, str]:
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(queue_directory),
        "smtp_dns_support_level": "dnssec",
        "smtp_tls_security_level": "may",
        "smtp_tls_CAfile": "/etc/ssl/certs/ca-certificates.crt",
        "smtp_tls_dane_insecure_mx_policy": "dane",
        "smtp_tls_policy_maps": f"socketmap:unix:{daemon.socket}:postfix",
    }


def doctor(
    daemon: Daemon,
    tmp: Path,
    main_cf: dict[str, str] | None = None,
    master_cf: str = MASTER_CF_PLAIN,
    config: dict[str, dict[str, Any]] | None = None,
    *extra: str,
) -> tuple[int, str]:
    pf = tmp / "postfix"
    pf.mkdir(exist_ok=True)
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    settings = good_main_cf(daemon, spool)
    settings.update(main_cf or {})
    (pf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    (pf / "master.cf").write_text(master_cf)
    sections = {k: dict(v) for k, v in daemon.sections.items()}
    sections["server"] = {k: v for k, v in sections["server"].items() if not k.startswith("_")}
    for name, table in (config or {}).items():
        sections.setdefault(name, {}).update(table)
    toml = tmp / "policyd.toml"
    toml.write_text(render_toml(sections))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyd.cli.policyctl",
            "doctor",
            "--config",
            str(toml),
            "--config-directory",
            str(pf),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT,
        check=False,
    )
    assert res.stderr == "", res.stderr
    return res.returncode, res.stdout


def lines(out: str, status: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(status)]


def test_good_installation_passes(daemon: Daemon, tmp_path: Path) -> None:
    code, out = doctor(daemon, tmp_path)
    assert code == 0, out
    assert lines(out, "FAIL") == []
    for name in (
        "postfix-version",
        "smtp_dns_support_level",
        "smtp_tls_policy_maps",
        "reach",
        "daemon",
        "resolver-validates",
        "store",
    ):
        assert any(ln.split()[1] == f"{name}:" for ln in lines(out, "OK")), (name, out)
    assert "user postfix reaches" in out


MISCONFIGURED = [
    ({"smtp_dns_support_level": "enabled"}, "smtp_dns_support_level: is enabled"),
    ({"smtp_tls_security_level": "none"}, "smtp_tls_security_level: is none"),
    (
        {"smtp_tls_policy_maps": "socketmap:unix:/run/elsewhere.sock:postfix"},
        "smtp_tls_policy_maps: socketmap:unix:/run/elsewhere.sock:postfix names no listener",
    ),
    ({"smtp_tls_CAfile": "/nonexistent/ca.pem"}, "smtp_tls_CAfile: /nonexistent/ca.pem does"),
    (
        {"smtp_tls_CAfile": "", "smtp_tls_CApath": ""},
        "smtp_tls_CAfile: no CA configured",
    ),
    (
        {"smtp_tls_dane_insecure_mx_policy": "may"},
        "smtp_tls_dane_insecure_mx_policy: is may",
    ),
]


@pytest.mark.parametrize(("main_cf", "finding"), MISCONFIGURED)
def test_main_cf_misconfigurations(
    daemon: Daemon, tmp_path: Path, main_cf: dict[str, str], finding: str
) -> None:
    code, out = doctor(daemon, tmp_path, main_cf)
    assert code == 1
    assert any(finding in ln for ln in lines(out, "FAIL")), out
    assert "->" in next(ln for ln in lines(out, "FAIL") if finding in ln)  # says what to do


def test_unknown_profile(daemon: Daemon, tmp_path: Path) -> None:
    maps = {"smtp_tls_policy_maps": f"socketmap:unix:{daemon.socket}:nosuch"}
    code, out = doctor(daemon, tmp_path, maps)
    assert code == 1
    assert "no profile 'nosuch'" in out


def test_profile_attributes_this_postfix_cannot_parse(daemon: Daemon, tmp_path: Path) -> None:
    version = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    maps = {"smtp_tls_policy_maps": f"socketmap:unix:{daemon.socket}:strict"}
    code, out = doctor(daemon, tmp_path, maps)
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) >= (3, 10):
        assert "profile-attributes" not in out
    else:
        assert code == 1
        assert "profile-attributes: profile strict adds policy_type" in out
        assert f"Postfix {version} cannot parse" in out


def test_chroot_path_missing(daemon: Daemon, tmp_path: Path) -> None:
    code, out = doctor(daemon, tmp_path, master_cf=MASTER_CF_CHROOT)
    assert code == 1
    spool = tmp_path / "spool"
    found = [ln for ln in lines(out, "FAIL") if ln.startswith("FAIL reach-chroot:")]
    assert found, out
    assert f"looks for {spool}{daemon.socket}" in found[0]
    assert "path missing in the chroot" in found[0]


def test_chroot_path_present(daemon: Daemon, open_tmp: Path) -> None:
    """The socket linked into the chroot is reached from there, as the postfix user."""
    inside = Path(f"{open_tmp}/spool{daemon.socket}")
    inside.parent.mkdir(parents=True)
    for parent in inside.parents:
        if parent == open_tmp:
            break
        parent.chmod(0o755)
    os.link(daemon.socket, inside)
    code, out = doctor(daemon, open_tmp, master_cf=MASTER_CF_CHROOT)
    assert "OK   reach-chroot: user postfix (chrooted smtp in" in out, out
    assert code == 0, out


def test_permission_denied_is_reported(world: World, tmp_path: Path) -> None:
    # The socket lives in a directory only root may enter.
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    sections = base_sections(directory, world.resolver)
    sections["probe"] = {"enabled": False}
    d = Daemon(directory, sections)
    d.start()
    try:
        code, out = doctor(d, tmp_path)
    finally:
        d.stop()
    assert code == 1
    found = [ln for ln in lines(out, "FAIL") if ln.startswith("FAIL reach:")]
    assert found and "permission denied" in found[0], out
    assert "socket_group" in found[0]


def test_resolver_that_does_not_validate(daemon: Daemon, world: World, tmp_path: Path) -> None:
    config = {"dns": {"nameservers": [world.authoritative]}}
    code, out = doctor(daemon, tmp_path, config=config)
    assert code == 1
    assert "FAIL resolver-validates" in out
    assert "without the AD bit" in out


def test_remote_nameserver_warns(daemon: Daemon, tmp_path: Path) -> None:
    config = {"dns": {"nameservers": ["192.0.2.53"], "timeout": 0.5, "lifetime": 1.0}}
    _code, out = doctor(daemon, tmp_path, config=config)
    assert "WARN dns-nameservers: 192.0.2.53 not on this host" in out


def test_store_not_writable(daemon: Daemon, tmp_path: Path) -> None:
    config = {"store": {"url": f"sqlite:///{tmp_path}/missing-dir/policyd.db"}}
    code, out = doctor(daemon, tmp_path, config=config)
    assert code == 1
    assert f"FAIL store: {tmp_path}/missing-dir does not exist" in out


def test_store_not_writable_by_its_owner(daemon: Daemon, open_tmp: Path) -> None:
    """The database belongs to nobody, whose directory it cannot write (no journal)."""
    db = open_tmp / "ro.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    os.chown(db, pwd.getpwnam("nobody").pw_uid, -1)
    config = {"store": {"url": f"sqlite:///{db}"}}
    code, out = doctor(daemon, open_tmp, config=config)
    assert code == 1
    assert f"FAIL store: {db} not writable by its owner nobody" in out
    assert [p.name for p in open_tmp.iterdir() if p.name.startswith("ro.db")] == ["ro.db"]


def test_dry_run_profile_warns(daemon: Daemon, tmp_path: Path) -> None:
    config = {"profiles.postfix": {"dry_run": True}}
    code, out = doctor(daemon, tmp_path, config=config)
    assert code == 0, out  # a warning, not a failure
    assert "WARN profile-dry-run: profile postfix is a dry run: Postfix is told NOTFOUND" in out


def test_daemon_not_running(daemon: Daemon, open_tmp: Path) -> None:
    """The configuration names sockets nobody listens on: doctor says so, with the reason."""
    sock = f"{open_tmp}/down.sock"
    config = {"server": {"socketmap": [f"unix:{sock}"], "control": f"unix:{open_tmp}/ctl.sock"}}
    main_cf = {"smtp_tls_policy_maps": f"socketmap:unix:{sock}:postfix"}
    code, out = doctor(daemon, open_tmp, main_cf, config=config)
    assert code == 1
    assert f"FAIL reach: user postfix cannot connect to {sock}: no such socket" in out
    assert "FAIL daemon: daemon unreachable at" in out


def test_resolver_down(daemon: Daemon, tmp_path: Path) -> None:
    config = {"dns": {"nameservers": ["127.0.0.9"], "timeout": 0.5, "lifetime": 1.0}}
    code, out = doctor(daemon, tmp_path, config=config)
    assert code == 1
    assert "FAIL resolver-validates: 127.0.0.9: . DNSKEY lookup failed" in out


def test_json(daemon: Daemon, tmp_path: Path) -> None:
    main_cf = {"smtp_dns_support_level": "disabled"}
    code, out = doctor(daemon, tmp_path, main_cf, MASTER_CF_PLAIN, None, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["smtp_dns_support_level"]
    assert failed[0]["fix"] == "set smtp_dns_support_level = dnssec in main.cf"
