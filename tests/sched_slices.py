"""Threads' scheduler slices as Linux shows them, for the tests of [server] cpu_slice."""

from __future__ import annotations

import os
import platform
import sys
from typing import Final

# Linux 6.12 and later keep a fair thread's sched_runtime as its slice (and show it).
KERNEL_USES_SLICES: Final = sys.platform == "linux" and tuple(
    int(part) for part in platform.release().split(".")[:2]
) >= (6, 12)


def thread_slice(tid: int, pid: int | str = "self") -> int:
    """se.slice of thread ``tid`` of process ``pid``, in nanoseconds, from /proc."""
    with open(f"/proc/{pid}/task/{tid}/sched", encoding="ascii") as sched:
        for line in sched:
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
    raise AssertionError(f"no se.slice in /proc/{pid}/task/{tid}/sched")


def thread_slices(pid: int) -> dict[int, int]:
    """se.slice of every thread of ``pid``."""
    return {int(tid): thread_slice(int(tid), pid) for tid in os.listdir(f"/proc/{pid}/task")}
