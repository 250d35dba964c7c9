"""The running daemon asks the kernel for [server] cpu_slice, for every thread it has
(they inherit it from the main thread), and asks nothing with 0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policyd.settings import DEFAULT_CPU_SLICE
from tests.daemon import started
from tests.sched_slices import KERNEL_USES_SLICES, thread_slice, thread_slices

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not KERNEL_USES_SLICES,
        reason="Linux 6.12 or later keeps a fair thread's sched_runtime as its slice",
    ),
]


def own_slice() -> int:
    return thread_slice(os.getpid())


def test_the_daemon_runs_with_the_default_slice(tmp_path: Path) -> None:
    assert own_slice() != round(DEFAULT_CPU_SLICE * 1e9)  # else the test proves nothing
    for daemon in started(tmp_path):
        assert daemon.proc is not None
        daemon.wait_log(r"scheduler slice 0\.10 ms \(\[server\] cpu_slice\)")
        slices = thread_slices(daemon.proc.pid)
        assert set(slices.values()) == {round(DEFAULT_CPU_SLICE * 1e9)}, slices


def test_zero_leaves_the_kernels_slice(tmp_path: Path) -> None:
    for daemon in started(tmp_path, server={"cpu_slice": 0}):
        assert daemon.proc is not None
        daemon.wait_log(r"policyd \S+ ready")
        assert set(thread_slices(daemon.proc.pid).values()) == {own_slice()}
        assert "cpu_slice" not in daemon.log()
