"""The test world a benchmark runs in, and the daemons it starts there.

A benchmark builds the world (network namespace, signed DNS, the extensions it names:
needs root) in a temporary directory, starts its daemons in the world's namespace, and
stops them and removes everything when it ends, however it ends.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.client import cpu_count
from tests.daemon import Daemon
from tests.world import scenarios
from tests.world.world import World

START_TIMEOUT: Final = 20.0  # seconds for a daemon to accept connections


@dataclass
class Running:
    """A daemon taking lookups over TCP on 127.0.0.1:``port``."""

    name: str
    port: int
    pid: int
    stop: Callable[[], Any]


@dataclass
class Bench:
    world: World
    dir: Path  # the benchmark's own files, beside the world's
    daemons: list[Running] = field(default_factory=list)  # stopped at the end, last first


def is_root() -> bool:
    """Whether the world can be built; says why not on stderr."""
    if os.geteuid() == 0:
        return True
    print("needs root (network namespace)", file=sys.stderr)
    return False


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` to run on ``cpus`` only (threads it starts later
    inherit that from the thread that starts them)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def machine() -> str:
    """The interpreter and the machine, for a benchmark's header line."""
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{cpu_count()} CPUs, {platform.machine()}"
    )


@contextmanager
def bench_world(prefix: str, *extensions: str) -> Iterator[Bench]:
    """The world with only ``extensions`` (module names) besides its base zones."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    scenarios.EXTENSIONS = extensions
    bench = Bench(scenarios.build(tmp / "world"), tmp)
    try:
        yield bench
    finally:
        for d in reversed(bench.daemons):
            d.stop()
        bench.world.close()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def start_policyd(world: World, directory: Path, sections: dict[str, dict[str, Any]]) -> Running:
    """policyd with ``sections`` in the world's namespace, taking lookups."""
    d = Daemon(directory, sections, prefix=world.exec_prefix())
    d.start()
    assert d.proc is not None
    wait_port(d.tcp_port, d.proc, d.log_path)
    return Running("policyd", d.tcp_port, d.proc.pid, d.stop)
