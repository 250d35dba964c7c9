"""The world's private network namespace: only a loopback interface, nothing reaches out.

``enter()`` moves the *calling thread* into the namespace with setns(2).  Every subprocess
and thread that thread starts afterwards is created inside it, so the test process and the
daemons it starts share one loopback network without touching the host's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
from pathlib import Path
from typing import Final

from tests.world import procs

PREFIX: Final = "policyd-t"
RUN_NETNS: Final = Path("/run/netns")  # where `ip netns add` bind-mounts namespaces
ETC_NETNS: Final = Path("/etc/netns")  # per-namespace /etc overlays used by `ip netns exec`
CLONE_NEWNET: Final = 0x40000000  # <sched.h>: setns() must join a network namespace
RESOLV_CONF: Final = "nameserver 127.0.0.1\n"  # the world's unbound, for `ip netns exec`


def name_for(pid: int | None = None) -> str:
    """The namespace name of a test process: ``policyd-t<pid>``."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete ``policyd-t<pid>`` namespaces whose test process is dead; return their names.

    A test run killed before its teardown leaves the namespace, its /etc overlay and maybe
    its named and unbound running inside it: those are killed too.
    """
    names = {
        path.name
        for base in (RUN_NETNS, ETC_NETNS)
        if base.is_dir()
        for path in base.iterdir()
        if path.name.startswith(PREFIX)
    }
    removed: list[str] = []
    for name in sorted(names):
        suffix = name.removeprefix(PREFIX)
        if suffix.isdigit() and not _pid_alive(int(suffix)):
            if (RUN_NETNS / name).exists():
                _kill_inside(name)
            delete(name)
            removed.append(name)
    return removed


def _kill_inside(ns: str) -> None:
    """SIGKILL the processes left in a dead test run's namespace (its orphaned daemons)."""
    for pid in procs.run(["ip", "netns", "pids", ns]).split():
        if int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def create(ns: str, bound_addresses: tuple[str, ...] = ()) -> None:
    """Create ``ns`` with loopback up and a resolv.conf naming the world's resolver.

    Loopback alone is enough for most servers: the kernel routes all of 127.0.0.0/8 to
    ``lo``, so a socket can bind any 127.0.x.y without ``ip addr add``; ``::1`` is there too.
    ``bound_addresses`` are added to ``lo`` anyway, for daemons that only listen on
    addresses they find on an interface (named's ``listen-on``).
    """
    cleanup_stale()
    if (RUN_NETNS / ns).exists():
        delete(ns)  # a leftover of this very pid (pid reuse): start clean
    procs.run(["ip", "netns", "add", ns])
    try:
        procs.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for address in bound_addresses:
            procs.run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "lo"])
        etc = ETC_NETNS / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(RESOLV_CONF)
    except BaseException:
        delete(ns)
        raise


def delete(ns: str) -> None:
    """Remove the namespace and its /etc overlay; missing pieces are fine."""
    if (RUN_NETNS / ns).exists():
        procs.run(["ip", "netns", "del", ns])
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)


def exec_prefix(ns: str) -> list[str]:
    """The argv prefix for programs that must also see the namespace's /etc/resolv.conf
    (``ip netns exec`` bind-mounts it in a private mount namespace; setns() alone does not)."""
    return ["ip", "netns", "exec", ns]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class Entered:
    """The calling thread's stay in a namespace; ``leave()`` takes it back where it was."""

    def __init__(self, ns: str, home_fd: int) -> None:
        self.ns = ns
        self._home_fd: int | None = home_fd

    def leave(self) -> None:
        """Return the thread to the namespace it was in before ``enter``; idempotent."""
        fd, self._home_fd = self._home_fd, None
        if fd is None:
            return
        try:
            _setns(fd)
        finally:
            os.close(fd)


def enter(ns: str) -> Entered:
    """Move the calling thread (not the other threads of the process) into ``ns``."""
    # thread-self, not self: namespaces are per thread and only this one moves.
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(RUN_NETNS / ns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(home_fd)
        raise
    try:
        _setns(fd)
    except OSError as exc:
        os.close(home_fd)
        if exc.errno == errno.EPERM:
            raise PermissionError(f"setns into {ns}: needs root (CAP_SYS_ADMIN)") from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return Entered(ns, home_fd)
