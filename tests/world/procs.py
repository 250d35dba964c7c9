"""Finding the system tools and running them: one-shot commands and background daemons.

Every wait here is bounded by a named constant, and every daemon runs in its own process
group so that stopping it can never leave an orphan behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

COMMAND_TIMEOUT: Final = 30.0  # seconds for one key generation, signing, `ip` call...
STOP_TIMEOUT: Final = 5.0  # seconds a daemon gets to exit after SIGTERM before SIGKILL
KILL_TIMEOUT: Final = 5.0  # seconds to reap a daemon after SIGKILL (it cannot ignore it)
POLL_INTERVAL: Final = 0.05  # seconds between two readiness checks
LOG_TAIL: Final = 4000  # characters of a daemon's log quoted in an error

# Root's PATH usually has the sbin directories, but a CI environment may not: named,
# unbound and ip live there on Debian.
SBIN_DIRS: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ToolMissing(RuntimeError):
    """A program the world needs is not installed."""


def find_tool(name: str) -> str | None:
    """The absolute path of ``name`` on PATH or in the sbin directories, or None."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def tool(name: str) -> str:
    """The absolute path of ``name``; raises ToolMissing when it is not installed."""
    found = find_tool(name)
    if found is None:
        raise ToolMissing(f"{name} is not installed")
    return found


def run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a command to completion and return its stdout; fail loudly with its stderr."""
    argv = [tool(argv[0]), *argv[1:]]
    try:
        res = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(argv)} timed out after {timeout} s") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr.strip()}\n{res.stdout.strip()}"
        )
    return res.stdout


class Background:
    """A long-running program with stdout and stderr in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = [tool(argv[0]), *argv[1:]]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start the program and return once ``ready()`` is true; raise (and stop it) if
        it exits or is not ready within ``timeout`` seconds."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            # Own session = own process group: stop() kills the whole group.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"{self.name} exited {code} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """SIGTERM the process group, wait, SIGKILL it on timeout; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(KILL_TIMEOUT)
        # The leader is gone; anything it forked into its group goes with it.
        self._signal_group(proc.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is already empty
            os.killpg(pgid, sig)

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
