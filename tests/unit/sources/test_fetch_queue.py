"""policyd.sources.fetch_queue: lanes, bounds, preemption, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from policyd.sources.fetch_queue import FetchQueue, FetchQueueFull, Lane, Work


@pytest.fixture(autouse=True)
async def no_runs_left() -> AsyncIterator[None]:
    """Stop what a test leaves running, so no task outlives its loop."""
    yield
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("mta-sts ")]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


class Works:
    """Work functions that record when they start and finish on ``release(key)``."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def __call__(self, key: str) -> Work:
        async def work() -> None:
            self.started.append(key)
            await self.gates.setdefault(key, asyncio.Event()).wait()

        return work

    def release(self, key: str) -> None:
        self.gates.setdefault(key, asyncio.Event()).set()


def submit(q: FetchQueue, works: Works) -> Callable[[str, Lane], asyncio.Future[None]]:
    return lambda key, lane: q.submit(key, lane, works(key))


async def test_lanes_in_order_first_come_first_served() -> None:
    q, works = FetchQueue(1, 10), Works()
    add = submit(q, works)
    add("running", Lane.REFRESH)
    await settle()
    futures = {
        k: add(k, lane)
        for k, lane in [
            ("bg1", Lane.BACKGROUND),
            ("w1", Lane.WAITED),
            ("bg2", Lane.BACKGROUND),
            ("r1", Lane.REFRESH),
            ("w2", Lane.WAITED),
        ]
    }
    for key in ["running", "r1", "w1", "w2", "bg1", "bg2"]:
        await settle()
        assert works.started[-1] == key
        works.release(key)
    await asyncio.gather(*futures.values())
    assert q.stats().running == q.stats().queued == 0


async def test_same_key_joins_and_moves_up() -> None:
    q, works = FetchQueue(1, 10), Works()
    add = submit(q, works)
    add("busy", Lane.REFRESH)
    first = add("a", Lane.BACKGROUND)
    add("b", Lane.WAITED)
    again = add("a", Lane.WAITED)  # a lookup waits for it now: to the waited lane, after b
    assert again is first
    q.demote("b")  # b's lookup gave up
    for key in ["busy", "a", "b"]:
        await settle()
        assert works.started[-1] == key
        works.release(key)
    await first


async def test_urgent_job_stops_longest_running_background_run() -> None:
    q, works = FetchQueue(2, 10), Works()
    add = submit(q, works)
    add("old", Lane.WAITED)
    await settle()
    add("young", Lane.WAITED)
    await settle()
    q.demote("old")
    q.demote("young")
    urgent = add("urgent", Lane.WAITED)
    await settle()
    assert works.started == ["old", "young", "urgent"]
    assert q.stats().preempted == 1
    works.release("urgent")
    await urgent
    await settle()
    assert works.started[-1] == "old"  # queued again, run again from the start


async def test_runs_started_after_a_job_was_queued_are_not_stopped_for_it() -> None:
    """Discoveries looked up together do not stop one another when they give up."""
    q, works = FetchQueue(1, 10), Works()
    add = submit(q, works)
    add("a", Lane.WAITED)
    add("b", Lane.WAITED)  # queued before a started
    await settle()
    q.demote("a")
    await settle()
    assert q.stats().preempted == 0 and works.started == ["a"]


async def test_bounded_queue_drops_background_then_refuses() -> None:
    q, works = FetchQueue(1, 2), Works()
    add = submit(q, works)
    add("run", Lane.WAITED)
    await settle()
    bg = add("bg", Lane.BACKGROUND)
    add("w", Lane.WAITED)
    refused_bg = add("bg2", Lane.BACKGROUND)
    assert isinstance(refused_bg.exception(), FetchQueueFull)
    add("w2", Lane.WAITED)  # drops bg, the oldest background job
    assert isinstance(bg.exception(), FetchQueueFull)
    refused = add("w3", Lane.WAITED)
    with pytest.raises(FetchQueueFull, match="2 fetches already queued"):
        refused.result()
    assert q.stats().dropped == 3
    assert q.stats().queued == 2


async def test_failure_and_outside_cancel() -> None:
    q = FetchQueue(1, 5)

    async def boom() -> None:
        raise RuntimeError("bug")

    failed = q.submit("x", Lane.WAITED, boom)
    with pytest.raises(RuntimeError):
        await failed
    works = Works()
    running = q.submit("y", Lane.WAITED, works("y"))
    queued = q.submit("z", Lane.WAITED, works("z"))
    await settle()
    running.cancel()
    queued.cancel()
    await settle()
    assert works.started == ["y"]
    assert q.stats().running == q.stats().queued == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mta-sts ")]


def test_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        FetchQueue(0, 1)
