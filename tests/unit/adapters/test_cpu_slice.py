"""The scheduler slice the daemon asks for, against the running kernel: each test asks in
a thread of its own (a thread's slice is its own), so the test process keeps its own."""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from policyd.adapters import cpu_slice
from policyd.adapters.cpu_slice import Outcome, SliceResult, request_slice
from tests.sched_slices import KERNEL_USES_SLICES, thread_slice

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in cpu_slice._CALLS,
    reason="sched_setattr(2) is Linux's, numbered here for the common architectures",
)


def in_thread(work: Callable[[], T]) -> T:
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    return results[0]


def test_the_thread_gets_the_slice_and_keeps_its_nice_value() -> None:
    def work() -> tuple[SliceResult, int, int]:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 5)  # on Linux, this thread's nice value
        result = request_slice(0.0002)
        return result, thread_slice(tid), os.getpriority(os.PRIO_PROCESS, tid)

    result, seen, nice = in_thread(work)
    assert nice == 5  # a set that reset the nice value to 0 would fail here
    if KERNEL_USES_SLICES:
        assert result == SliceResult(Outcome.SET, slice=0.0002)
        assert seen == 200_000
    else:
        assert result.outcome is Outcome.IGNORED


def test_the_calling_threads_slice_only() -> None:
    main = threading.get_native_id()
    before = thread_slice(main)
    in_thread(lambda: request_slice(0.0003))
    assert thread_slice(main) == before


def test_a_thread_under_another_policy_is_left_as_it_is() -> None:
    def work() -> SliceResult:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return request_slice(0.0001)

    result = in_thread(work)
    assert result.outcome is Outcome.KEPT
    assert str(os.SCHED_IDLE) in result.detail


def test_a_failing_call_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # A number no kernel has for a system call: ENOSYS, as a kernel without it would say.
    monkeypatch.setitem(cpu_slice._CALLS, platform.machine(), (99_999, 99_998))
    result = in_thread(lambda: request_slice(0.0001))
    assert result.outcome is Outcome.REFUSED
    assert result.detail.startswith("sched_getattr: ")
    assert os.strerror(38) in result.detail  # ENOSYS


def test_an_unknown_architecture_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(cpu_slice._CALLS, platform.machine())
    result = in_thread(lambda: request_slice(0.0001))
    assert result == SliceResult(Outcome.UNSUPPORTED, detail=f"linux {platform.machine()}")
