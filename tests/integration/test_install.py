"""Installed as a postmaster installs it, and used by a stock Debian Postfix.

The README's install steps, followed literally under a prefix of the test's own: Debian's
python3 makes the venv, pip installs policyd (from the wheels `make test` builds, since the
test world has no network), the system user comes from ``adduser``, the shipped
``etc/policyd.toml`` is the configuration (plus the test world's resolver and CA), and the
daemon starts with the user, groups, directory modes and umask read out of
``systemd/policyd.service`` (through setpriv: systemd is not PID 1 here), so the unit file
and this test cannot drift apart. Postfix runs with Debian's stock master.cf (smtp(8) and
smtpd(8) chrooted) and the lines of ``etc/postfix/main.cf.snippet``, and delivers real mail
to a DANE, an MTA-STS and a probe-verified destination; then policyd restarts and Postfix
delivers again.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.daemon import WORLD_NETWORK
from tests.postfix_conf import postmap_cmd
from tests.postfix_sender import PostfixSender, Submitted
from tests.world.procs import Background
from tests.world.smtp_world import received
from tests.world.world import World

pytestmark = pytest.mark.integration

ROOT: Final = Path(__file__).resolve().parents[2]
UNIT: Final = ROOT / "systemd" / "policyd.service"
MILTER_UNIT: Final = ROOT / "systemd" / "policyd-milter.service"
SNIPPET: Final = ROOT / "etc" / "postfix" / "main.cf.snippet"
SHIPPED_CONFIG: Final = ROOT / "etc" / "policyd.toml"
WHEELHOUSE: Final = ROOT / ".venv" / "wheelhouse"
STOCK_MASTER_CF: Final = Path("/usr/share/postfix/master.cf.dist")
DEBIAN_PYTHON: Final = "/usr/bin/python3"
SENDER_ADDRESS: Final = "127.0.9.3"
START_TIMEOUT: Final = 30.0
DELIVERY_TIMEOUT: Final = 40.0
CTL_TIMEOUT: Final = 60.0
# Files Debian's postfix start-up copies into the chroot (/var/spool/postfix/etc).
CHROOT_ETC: Final = ("services", "hosts", "nsswitch.conf", "localtime", "host.conf")


def unit_service(unit: Path = UNIT) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


def snippet_settings() -> list[str]:
    lines = []
    for raw in SNIPPET.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            assert "=" in line, line
            lines.append(line)
    return lines


def run(cmd: list[str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{shlex.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res


class Installation:
    """The README's steps under ``prefix`` (``prefix/opt/policyd``, ``prefix/usr/bin``,
    ``prefix/etc/policyd``, and the unit's runtime and state directories)."""

    def __init__(self, world: World, prefix: Path) -> None:
        self.world = world
        self.prefix = prefix
        self.unit = unit_service()
        self.user = self.unit["User"]
        self.group = self.unit["Group"]
        self.venv = prefix / "opt" / "policyd"
        self.bin = prefix / "usr" / "bin"
        self.config = prefix / "etc" / "policyd" / "policyd.toml"
        self.runtime = prefix / "run" / self.unit["RuntimeDirectory"]
        self.state = prefix / "var" / "lib" / self.unit["StateDirectory"]
        self.created_user = False
        self.milter = unit_service(MILTER_UNIT)
        self.created_milter_user = False
        self.daemon: Background | None = None

    def rooted(self, path: str) -> str:
        """A path of the unit file, under the prefix."""
        return str(self.prefix / path.lstrip("/"))

    def install(self) -> None:
        # python3 -m venv /opt/policyd && /opt/policyd/bin/pip install /path/to/policyd
        run([DEBIAN_PYTHON, "-m", "venv", str(self.venv)])
        run(
            [
                str(self.venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                str(WHEELHOUSE),
                "policyd",
            ]
        )
        # ln -s /opt/policyd/bin/policyd /opt/policyd/bin/policyctl /usr/bin/
        self.bin.mkdir(parents=True)
        for name in ("policyd", "policyctl"):
            (self.bin / name).symlink_to(self.venv / "bin" / name)
        # adduser --system --group --no-create-home policyd
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            run(["adduser", "--system", "--group", "--no-create-home", self.user])
            self.created_user = True
        # The milter's user, as the README makes it: its own, a member of the daemon's group.
        milter_user = self.milter["User"]
        try:
            pwd.getpwnam(milter_user)
        except KeyError:
            run(["adduser", "--system", "--group", "--no-create-home", milter_user])
            self.created_milter_user = True
        run(["adduser", milter_user, self.group])
        # install -D -m 0644 etc/policyd.toml /etc/policyd/policyd.toml, with the test
        # world's resolver and CA, and the runtime and state directories under the prefix.
        ca = self.prefix / "etc" / "ssl" / "ca.pem"
        ca.parent.mkdir(parents=True)
        shutil.copyfile(self.world.ca_file, ca)
        self.config.parent.mkdir(parents=True)
        self.config.write_text(
            SHIPPED_CONFIG.read_text()
            + "\n# -- the test world's, under the test's prefix --\n"
            + f'[server]\ncontrol = "unix:{self.runtime}/control.sock"\n'
            + f'[dns]\nnameservers = ["{self.world.resolver}"]\n'
            + f'[tls]\nca_file = "{ca}"\n'
            + f'[outbound]\nallow_networks = ["{WORLD_NETWORK}"]\n'
            + f'[control]\nread_group = "{self.group}"\n'  # the README's milter step
            + f'[store]\nurl = "sqlite:///{self.state}/policyd.db"\n'
        )
        for path in (self.prefix, *self.prefix.rglob("*")):
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else (path.stat().st_mode & 0o755) | 0o444)

    def make_directories(self) -> None:
        """What systemd does for RuntimeDirectory= and StateDirectory= at each start."""
        uid = pwd.getpwnam(self.user).pw_uid
        gid = grp.getgrnam(self.group).gr_gid
        for path, key in (
            (self.runtime, "RuntimeDirectoryMode"),
            (self.state, "StateDirectoryMode"),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(int(self.unit[key], 8))

    def command(self, key: str) -> list[str]:
        """ExecStart= or ExecStartPre= as the unit's user, groups and umask would run it."""
        argv = [
            self.rooted(a) if a.startswith(("/usr/bin/", "/etc/")) else a
            for a in shlex.split(self.unit[key])
        ]
        groups = ",".join(self.unit.get("SupplementaryGroups", "").split())
        privs = ["setpriv", f"--reuid={self.user}", f"--regid={self.group}"]
        privs.append(f"--groups={groups}" if groups else "--clear-groups")
        umask = self.unit["UMask"]
        shell = f"umask {umask} && exec {shlex.join(argv)}"
        return [*self.world.exec_prefix(), *privs, "--", "/bin/sh", "-c", shell]

    def start(self) -> None:
        self.make_directories()
        run(self.command("ExecStartPre"))
        self.daemon = Background(
            "installed policyd", self.command("ExecStart"), self.prefix / "policyd.log"
        )
        self.daemon.start(self.answers, START_TIMEOUT)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port()), timeout=0.5):
                return (self.runtime / "control.sock").exists()
        except OSError:
            return False

    def port(self) -> int:
        maps = next(x for x in snippet_settings() if x.startswith("smtp_tls_policy_maps"))
        # socketmap:inet:127.0.0.1:PORT:postfix
        return int(maps.split("=", 1)[1].strip().split(":")[3])

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def policyctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            [str(self.bin / "policyctl"), "--socket", str(self.runtime / "control.sock"), *args],
            timeout=CTL_TIMEOUT,
        )

    def log(self) -> str:
        path = self.prefix / "policyd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def as_milter(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` as policyd-milter.service would run it: its user, group and groups."""
        m = self.milter
        groups = ",".join(m.get("SupplementaryGroups", "").split())
        privs = ["setpriv", f"--reuid={m['User']}", f"--regid={m['Group']}"]
        privs.append(f"--groups={groups}" if groups else "--clear-groups")
        return subprocess.run(
            [*privs, "--", *argv], capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False
        )

    def remove_user(self) -> None:
        if self.created_milter_user:
            subprocess.run(["userdel", self.milter["User"]], check=False, capture_output=True)
            subprocess.run(["groupdel", self.milter["Group"]], check=False, capture_output=True)
        if self.created_user:
            subprocess.run(["userdel", self.user], check=False, capture_output=True)
            subprocess.run(["groupdel", self.group], check=False, capture_output=True)


class StockPostfix(PostfixSender):
    """A sending Postfix with Debian's stock master.cf (chroot on) and the snippet's lines."""

    def __init__(self, world: World, base: Path, address: str, ca_file: Path) -> None:
        self.world_resolver = world.resolver  # _setup, called by __init__, needs it
        super().__init__(world, base, address, "unused: the snippet names the listener", ca_file)

    def _setup(
        self, policy_socket: str, ca_file: Path, milter: str | None, hold_smtp: bool
    ) -> None:
        super()._setup(policy_socket, ca_file, milter, hold_smtp)
        settings = snippet_settings()
        names = {line.split("=", 1)[0].strip() for line in settings}
        kept = [
            line
            for line in (self.conf / "main.cf").read_text().splitlines()
            if line.split("=", 1)[0].strip() not in names
        ]
        (self.conf / "main.cf").write_text("\n".join([*kept, *settings]) + "\n")
        stock = STOCK_MASTER_CF.read_text()
        listener = "smtp      inet  n       -       y       -       -       smtpd"
        assert listener in stock  # chroot column "y", as Debian ships it
        (self.conf / "master.cf").write_text(
            stock.replace(listener, f"{self.address}:25 inet n - y - - smtpd", 1)
        )
        # The chroot's etc/, as Debian's postfix start-up fills /var/spool/postfix/etc, with
        # the resolver of the world (which `ip netns exec` shows the master).
        etc = self.queue / "etc"
        etc.mkdir(exist_ok=True)
        for name in CHROOT_ETC:
            if Path("/etc", name).exists():
                shutil.copyfile(Path("/etc", name), etc / name)
        (etc / "resolv.conf").write_text(f"nameserver {self.world_resolver}\noptions trust-ad\n")


@pytest.fixture(scope="module")
def prefix() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="policyd-install-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture(scope="module")
def installed(world: World, prefix: Path) -> Iterator[Installation]:
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"{WHEELHOUSE} missing: `make test` (make deps) builds it")
    inst = Installation(world, prefix)
    try:
        inst.install()
        inst.start()
        yield inst
    finally:  # also when installing or starting failed: leave no user behind
        inst.stop()
        inst.remove_user()


@pytest.fixture(scope="module")
def postfix(world: World, installed: Installation, prefix: Path) -> Iterator[StockPostfix]:
    pf = StockPostfix(world, world.dir / "postfix-stock", SENDER_ADDRESS, prefix / "etc/ssl/ca.pem")
    pf.start()
    try:
        yield pf
    finally:
        pf.stop()


def deliver(world: World, pf: StockPostfix, domain: str, mx: str) -> tuple[Submitted, str, str]:
    sub = pf.submit(f"postmaster@{domain}", f"installed {domain}")
    line = pf.wait_status(sub, "sent", DELIVERY_TIMEOUT)
    tls = pf.tls_before(line)
    assert tls is not None, line
    deadline = time.monotonic() + 5.0
    while not any(sub.message_id in p.read_text(errors="replace") for p in received(world, mx)):
        assert time.monotonic() < deadline, f"{mx} did not record {sub.message_id}"
        time.sleep(0.1)
    return sub, line, tls


def test_runs_as_the_unit_says(installed: Installation) -> None:
    assert installed.daemon is not None
    pid = installed.daemon.proc.pid if installed.daemon.proc else 0
    status = Path(f"/proc/{pid}/status").read_text() if pid else ""
    # The sh -c wrapper execs the daemon: the pid is policyd's own process.
    uid = pwd.getpwnam(installed.user).pw_uid
    assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
    assert f"Umask:\t{installed.unit['UMask'].rjust(4, '0')}" in status, status
    assert "running as root" not in installed.log()
    db = installed.state / "policyd.db"
    assert db.exists() and db.stat().st_uid == uid


def test_the_milter_user_reads_through_the_control_socket_but_not_the_store(
    installed: Installation,
) -> None:
    """Security review L7: the milter's own user reaches the read-only commands through
    the daemon's group and read_group, and neither the write commands nor the store."""
    ctl = [str(installed.bin / "policyctl"), "--socket", str(installed.runtime / "control.sock")]
    status = installed.as_milter(*ctl, "status")
    assert status.returncode == 0, status.stderr
    flush = installed.as_milter(*ctl, "flush", "example.com")
    assert flush.returncode != 0 and "may not make changes" in flush.stderr, flush
    db = installed.state / "policyd.db"
    assert db.exists()
    read = installed.as_milter("cat", str(db))
    assert read.returncode != 0 and "Permission denied" in read.stderr, read.returncode


def test_postmap_as_postfix_user_reaches_the_default_listener(installed: Installation) -> None:
    table = f"socketmap:inet:127.0.0.1:{installed.port()}:postfix"
    res = subprocess.run(
        ["runuser", "-u", "postfix", "--", *postmap_cmd("-q", "dane-ee.test", table)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.stdout.strip() == "dane-only", res.stderr


def test_stock_postfix_delivers_then_again_after_a_restart(
    world: World, installed: Installation, postfix: StockPostfix
) -> None:
    master_cf = (postfix.conf / "master.cf").read_text()
    assert "smtp      unix  -       -       y       -       -       smtp" in master_cf
    installed.policyctl("probe", "probe-valid.test", "--wait")
    cases = [
        ("dane-ee.test", "mx.dane-ee.test", ("Verified TLS", "Trusted TLS")),
        ("sts-enforce.test", "mx.sts-enforce.test", ("Verified TLS",)),
        ("probe-valid.test", "mx.probe-valid.test", ("Verified TLS",)),
    ]
    for round_ in ("first", "after restart"):
        for domain, mx, wanted in cases:
            _, line, tls = deliver(world, postfix, domain, mx)
            assert f"relay={mx}[" in line, (round_, line)
            assert tls.split(": ", 1)[1].startswith(wanted), (round_, tls)
        if round_ == "first":
            installed.stop()
            installed.start()
    log = postfix.log()
    assert "Permission denied" not in log
    assert "client TLS configuration problem" not in log
