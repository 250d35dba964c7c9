"""SingleFlight and TaskSet: coalescing, cancellation that spares the shared work, cleanup,
failures that reach every caller and are logged when nobody waits."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from policyd.singleflight import SingleFlight, TaskSet


class Gated:
    """Work that counts its runs and returns ``result`` once ``gate`` is set."""

    def __init__(self, result: str) -> None:
        self.gate = asyncio.Event()
        self.runs = 0
        self.result = result

    async def __call__(self) -> str:
        self.runs += 1
        await self.gate.wait()
        return self.result


async def test_callers_of_one_key_share_one_task() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Gated("seven")
    callers = [asyncio.ensure_future(flight.run("a", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert "a" in flight and len(flight) == 1
    work.gate.set()
    assert await asyncio.gather(*callers) == ["seven"] * 5
    assert work.runs == 1
    assert len(flight) == 0


async def test_a_cancelled_caller_does_not_cancel_the_shared_work() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    first = asyncio.ensure_future(flight.run("k", work))
    second = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await second == "done"
    assert first.cancelled()


@pytest.mark.parametrize("way", ["run", "run_here"])
async def test_a_failure_reaches_every_caller_and_is_not_remembered(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    run = getattr(flight, way)
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    results = await asyncio.gather(run("k", failing), run("k", failing), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert calls == 1
    with pytest.raises(RuntimeError):
        await run("k", failing)  # alone: nobody else waits for its outcome
    assert calls == 2
    await asyncio.sleep(0)
    assert len(flight) == 0
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_forget_lets_the_next_caller_start_new_work() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    runs: list[int] = []

    async def work() -> int:
        runs.append(len(runs))
        await gate.wait()
        return len(runs)

    old = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    flight.forget("k")
    new = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(old, new)
    assert len(runs) == 2
    assert len(flight) == 0  # the old task's end does not remove the new one's entry early


async def test_cancel_all_cancels_the_running_work() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    never = asyncio.Event()
    task = flight.task("k", never.wait)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    flight.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(flight) == 0


async def test_task_set_logs_a_task_that_dies(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet(logging.getLogger("test.tasks"))

    async def dies() -> None:
        raise ValueError("lost")

    task = tasks.spawn(dies(), name="housekeeping")
    with pytest.raises(ValueError):
        await task
    await asyncio.sleep(0)
    assert len(tasks) == 0
    assert "background task housekeeping failed" in caplog.text


async def test_task_set_cancel_all_waits_for_the_tasks() -> None:
    tasks = TaskSet(logging.getLogger("test.tasks"))
    forever = asyncio.Event()
    ended: list[str] = []

    async def runs() -> None:
        try:
            await forever.wait()
        finally:
            ended.append("yes")

    tasks.spawn(runs(), name="a")
    tasks.spawn(runs(), name="b")
    await asyncio.sleep(0)
    await tasks.cancel_all()
    assert ended == ["yes", "yes"]
    assert len(tasks) == 0


async def test_callers_of_cancelled_work_are_cancelled_and_leavers_spare_it() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    never = asyncio.Event()
    leaver = asyncio.ensure_future(flight.run("k", never.wait))  # type: ignore[arg-type]
    stayer = asyncio.ensure_future(flight.run("k", never.wait))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    assert leaver.cancelled() and not stayer.done() and "k" in flight
    flight.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await stayer


async def test_run_here_does_the_first_callers_work_in_its_own_task() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    ran_in: list[asyncio.Task[object] | None] = []

    async def work() -> int:
        ran_in.append(asyncio.current_task())
        await gate.wait()
        return 7

    first = asyncio.ensure_future(flight.run_here("k", work))
    others = [asyncio.ensure_future(flight.run_here("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    assert ran_in == [first] and len(flight) == 1
    gate.set()
    assert await asyncio.gather(first, *others) == [7] * 4
    assert len(ran_in) == 1 and len(flight) == 0
    assert await flight.run_here("k", work) == 7  # nothing remembered: new work
    assert len(ran_in) == 2


async def test_run_here_hands_the_work_to_a_task_when_its_caller_is_cancelled() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Gated("done")
    first = asyncio.ensure_future(flight.run_here("k", work))
    second = asyncio.ensure_future(flight.run_here("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first.cancelled() and not second.done()
    assert work.runs == 2 and "k" in flight  # taken up again from the start, by a task
    third = asyncio.ensure_future(flight.run_here("k", work))  # joins the task
    work.gate.set()
    assert list(await asyncio.gather(second, third)) == ["done", "done"]
    assert work.runs == 2
    await asyncio.sleep(0)
    assert len(flight) == 0


async def test_run_here_work_outlives_its_only_caller() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    gate = asyncio.Event()
    finished: list[str] = []

    async def work() -> None:
        await gate.wait()
        finished.append("yes")

    caller = asyncio.ensure_future(flight.run_here("k", work))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    gate.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert caller.cancelled() and finished == ["yes"] and len(flight) == 0


async def test_run_here_callers_of_cancelled_work_are_cancelled() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    never = asyncio.Event()
    first = asyncio.ensure_future(flight.run_here("k", never.wait))  # type: ignore[arg-type]
    joiner = asyncio.ensure_future(flight.run_here("k", never.wait))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    flight.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    assert not first.done()  # the first caller's own work is its own to end
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(flight) == 0
