"""The daemon's CPU slice: a short request to Linux's EEVDF scheduler (Linux 6.12 and later).

EEVDF (the fair scheduler since Linux 6.6) lets a thread name the length of its usual
run, its slice, through ``sched_attr.sched_runtime`` of ``sched_setattr(2)``; the kernel
clamps it to 0.1-100 ms and otherwise gives it its own base slice (0.7 ms, times 1 plus
log2 of the CPUs up to 8: 1.4 ms on a machine of two). A thread woken with a shorter
slice than the one running may preempt it (the kernel's PREEMPT_SHORT).

policyd's event loop runs in short bursts (a cached answer takes a few tens of
microseconds; in bench/prefetch.py, seen with perf sched, 95% of its runs took under
0.23 ms), and while it waits for a CPU every lookup that arrives waits with it. Measured
there, with a validating unbound busy on the same two CPUs: the loop waited over 0.5 ms
for a CPU 195 times in 10 s with the kernel's slice, 39 times with 0.1 ms, and the p99 of
the lookups fell from 946 to 616 us. The share of the CPU is unchanged (that is the nice
value, which is kept as it is); a burst longer than the slice may be preempted sooner.

Nothing needs a privilege (any thread may shorten its own slice), no other policy is
touched (a thread that systemd started real-time or idle is left as it is), and
where it cannot be done (not Linux, an architecture whose call number is not known here, a
seccomp filter without ``@resources``, an older kernel that ignores it) the daemon runs on
with the kernel's slice: :func:`request_slice` says what happened, it never raises.
Threads inherit the slice of the thread that starts them, so it is asked for before any.
"""

from __future__ import annotations

import ctypes
import enum
import os
import struct
import sys
from dataclasses import dataclass
from typing import Final

# sched_setattr(2) and sched_getattr(2) by architecture (uname -m): the x86 and 32-bit
# ARM tables have their own numbers; the others share the generic table's 274/275.
_CALLS: Final[dict[str, tuple[int, int]]] = {
    "x86_64": (314, 315),
    "i386": (351, 352),
    "i686": (351, 352),
    "armv7l": (380, 381),
    "aarch64": (274, 275),
    "riscv64": (274, 275),
    "loongarch64": (274, 275),
    "ppc64le": (355, 356),
    "s390x": (345, 346),
}
# struct sched_attr as of Linux 3.14 (SCHED_ATTR_SIZE_VER0): size, policy, flags, nice,
# priority, runtime, deadline, period.
_ATTR: Final = struct.Struct("=IIQiIQQQ")


class Outcome(enum.Enum):
    SET = "set"  # the kernel took it and reports it back
    IGNORED = "ignored"  # accepted, but the kernel keeps its own slices (before 6.12)
    KEPT = "kept"  # not a fair-scheduled thread (real-time, idle): left as it is
    UNSUPPORTED = "unsupported"  # not Linux, or no call number for this architecture
    REFUSED = "refused"  # the call failed (a seccomp filter, a kernel without it)


@dataclass(frozen=True, slots=True)
class SliceResult:
    outcome: Outcome
    slice: float = 0.0  # seconds, as the kernel reports it (SET)
    detail: str = ""  # the error (REFUSED), the policy (KEPT), the machine (UNSUPPORTED)


def request_slice(seconds: float) -> SliceResult:
    """Ask for a slice of ``seconds`` (the kernel clamps it to 0.1-100 ms, see
    :data:`policyd.settings.MIN_CPU_SLICE`) for the calling thread, keeping its policy and
    nice value."""
    machine = os.uname().machine if sys.platform == "linux" else ""
    calls = _CALLS.get(machine)
    if calls is None:
        return SliceResult(Outcome.UNSUPPORTED, detail=f"{sys.platform} {machine}".rstrip())
    setattr_nr, getattr_nr = calls
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    buf = ctypes.create_string_buffer(_ATTR.size)
    size, zero = ctypes.c_long(_ATTR.size), ctypes.c_long(0)  # syscall(2) takes longs
    if syscall(ctypes.c_long(getattr_nr), zero, buf, size, zero) != 0:
        return _refused("sched_getattr")
    _, policy, _, nice, priority, *_ = _ATTR.unpack(buf.raw)
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        return SliceResult(Outcome.KEPT, detail=f"scheduling policy {policy}")
    wanted = round(seconds * 1e9)
    _ATTR.pack_into(buf, 0, _ATTR.size, policy, 0, nice, priority, wanted, 0, 0)
    if syscall(ctypes.c_long(setattr_nr), zero, buf, zero) != 0:
        return _refused("sched_setattr")
    if syscall(ctypes.c_long(getattr_nr), zero, buf, size, zero) != 0:
        return _refused("sched_getattr")
    runtime = _ATTR.unpack(buf.raw)[5]
    if runtime == 0:  # kernels before 6.12 report no slice for a fair thread
        return SliceResult(Outcome.IGNORED)
    return SliceResult(Outcome.SET, slice=runtime / 1e9)


def _refused(call: str) -> SliceResult:
    return SliceResult(Outcome.REFUSED, detail=f"{call}: {os.strerror(ctypes.get_errno())}")
