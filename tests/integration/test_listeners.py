"""Listeners as a mail host meets them: Postfix's user reaches the socket by default, a
second instance never cuts off a running one, and the default listener is loopback TCP."""

from __future__ import annotations

import grp
import os
import pwd
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.config import DEFAULT_PORT, ServerSettings
from tests.daemon import Daemon, postmap, started
from tests.postfix_conf import postmap_cmd
from tests.world.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
def files() -> Iterator[Path]:
    """A directory the postfix user can traverse (tmp_path's parents are root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="policyd-listen-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture
def daemon(world: World, files: Path) -> Iterator[Daemon]:
    # The shipped permissions of unix socketmap sockets (0660, postfix group).
    yield from started(files, server={"socket_mode": f"{ServerSettings().socket_mode:04o}"})


def as_postfix(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as Postfix's delivery agents do: user postfix, its groups only."""
    return subprocess.run(
        ["runuser", "-u", "postfix", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_default_socketmap_socket_admits_the_postfix_user(daemon: Daemon) -> None:
    st = os.stat(daemon.socket)
    assert grp.getgrgid(st.st_gid).gr_name == "postfix"
    assert st.st_mode & 0o777 == 0o660
    assert pwd.getpwnam("postfix")  # installed by make test with the postfix package
    res = as_postfix(
        postmap_cmd("-q", "example.invalid", f"socketmap:unix:{daemon.socket}:postfix")
    )
    assert "Permission denied" not in res.stderr, res.stderr
    assert res.returncode in (0, 1), res.stderr  # an answer (or NOTFOUND), not a failure
    assert "fatal" not in res.stderr, res.stderr


def test_second_instance_refuses_and_first_keeps_serving(daemon: Daemon, files: Path) -> None:
    assert postmap(f"socketmap:unix:{daemon.socket}:postfix", ["x.invalid"]) == ["NOTFOUND"]
    before = os.stat(daemon.socket).st_ino
    second = subprocess.run(
        [sys.executable, "-m", "policyd.cli.daemon", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert "answers on" in second.stderr and "not replacing it" in second.stderr
    # The running daemon's sockets are the same files and still answer.
    assert os.stat(daemon.socket).st_ino == before
    assert os.path.exists(daemon.control)
    assert postmap(f"socketmap:unix:{daemon.socket}:postfix", ["x.invalid"]) == ["NOTFOUND"]
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_stale_socket_is_replaced(daemon: Daemon) -> None:
    daemon.stop()
    # A socket file left behind with nobody listening (a crash): the next start replaces it.
    with socketlib.socket(socketlib.AF_UNIX) as leftover:
        leftover.bind(daemon.socket)
    daemon.proc = subprocess.Popen(
        [sys.executable, "-m", "policyd.cli.daemon", "--config", str(daemon.config_path)],
        stdout=daemon.log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = 200
    while deadline and postmap(f"socketmap:unix:{daemon.socket}:postfix", ["x.invalid"]) != [
        "NOTFOUND"
    ]:
        assert daemon.proc.poll() is None, daemon.log()
        deadline -= 1
        time.sleep(0.1)
    assert deadline, daemon.log()


def test_running_as_root_is_warned(daemon: Daemon) -> None:
    assert os.geteuid() == 0
    assert "running as root" in daemon.log()


def test_shipped_default_listener_is_loopback_tcp() -> None:
    assert [str(x) for x in ServerSettings().socketmap] == [f"inet:127.0.0.1:{DEFAULT_PORT}"]
    snippet = (Path(__file__).parents[2] / "etc/postfix/main.cf.snippet").read_text()
    assert f"socketmap:inet:127.0.0.1:{DEFAULT_PORT}:postfix" in snippet
