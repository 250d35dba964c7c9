"""policyd.adapters.write_behind: batches, bounds, coalescing, failures that do not stop it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from policyd.adapters.store import Kind, Record, StoreError
from policyd.adapters.store_sqlite import SqliteStore
from policyd.adapters.write_behind import WriteBehind
from policyd.core.event import Event
from tests.fakes import MemoryStore, event, no_time


def rec(key: str, value: str = "{}") -> Record:
    return Record(Kind.ANSWER, key, value, 100.0)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.fail = 0

    async def write_batch(self, records: Sequence[Record], events: Sequence[Event]) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreError("disk full")
        self.batches += 1
        for r in records:
            await self.put(r)
        for e in events:
            await self.append_event(e)


async def test_nothing_is_written_until_the_batch() -> None:
    store = CountingStore()
    w = WriteBehind(store)
    w.put(rec("a"))
    w.event(event(1.0, "a", "x"))
    assert store.records == {} and store.event_log == []
    await w.flush()
    assert store.batches == 1
    assert set(store.records) == {(Kind.ANSWER, "a")}
    assert store.event_log == [event(1.0, "a", "x")]
    assert w.stats().written == 2


async def test_records_coalesce_newest_wins() -> None:
    store = CountingStore()
    w = WriteBehind(store)
    w.put(rec("a", '{"n": 1}'))
    w.put(rec("a", '{"n": 2}'))
    assert w.stats().queued == 1
    await w.flush()
    assert store.records[(Kind.ANSWER, "a")].value == '{"n": 2}'


async def test_queues_are_bounded_and_count_drops() -> None:
    store = CountingStore()
    w = WriteBehind(store, max_queued=3)
    for i in range(5):
        w.put(rec(f"k{i}"))
        w.event(event(float(i), f"k{i}", "x"))
    w.put(rec("k0"))  # an update of a queued key is never dropped
    assert w.stats().queued == 6
    assert w.dropped == 4
    await w.flush()
    assert len(store.records) == 3 and len(store.event_log) == 3


async def test_failed_batch_is_logged_counted_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = CountingStore()
    store.fail = 1
    w = WriteBehind(store, interval=0.01, sleep=no_time)
    task = asyncio.create_task(w.run())
    try:
        w.event(event(1.0, "a", "lost"))
        with caplog.at_level(logging.ERROR, logger="policyd"):
            for _ in range(100):
                if w.dropped:
                    break
                await asyncio.sleep(0)
        assert w.dropped == 1
        assert "writes lost" in caplog.text
        w.event(event(2.0, "b", "kept"))
        for _ in range(100):
            if store.event_log:
                break
            await asyncio.sleep(0)
        assert store.event_log == [event(2.0, "b", "kept")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancelled_run_writes_what_is_left() -> None:
    store = CountingStore()
    w = WriteBehind(store, interval=3600)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0)
    w.event(event(1.0, "a", "last words"))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert store.event_log == [event(1.0, "a", "last words")]


async def test_sqlite_batch(tmp_path: Path) -> None:
    store = await SqliteStore.open(f"sqlite://{tmp_path / 'p.db'}")
    w = WriteBehind(store)
    for i in range(100):
        w.put(rec(f"k{i}"))
        w.event(event(float(i), f"k{i}", "x"))
    await w.flush()
    assert len(await store.scan(Kind.ANSWER)) == 100
    assert len(await store.events(0.0)) == 100
    await store.close()


async def test_a_full_batch_is_written_before_the_interval_ends() -> None:
    store = CountingStore()
    w = WriteBehind(store, interval=3600, batch_size=3)
    task = asyncio.create_task(w.run())
    try:
        w.put(rec("a"))
        w.event(event(1.0, "a", "x"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.batches == 0  # two waiting: the hour's interval runs on
        w.event(event(2.0, "b", "y"))
        for _ in range(20):
            if store.batches:
                break
            await asyncio.sleep(0)
        assert store.batches == 1 and len(store.event_log) == 2
        w.put(rec("c"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.batches == 1  # the count starts again after a batch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_after_a_failed_batch_a_full_one_waits_for_the_interval() -> None:
    store = CountingStore()
    store.fail = 1
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.Event().wait()  # an interval that never ends within the test

    w = WriteBehind(store, interval=60, batch_size=1, sleep=sleep)
    task = asyncio.create_task(w.run())
    try:
        w.event(event(1.0, "a", "lost"))
        for _ in range(20):
            if w.dropped:
                break
            await asyncio.sleep(0)
        assert w.dropped == 1
        w.event(event(2.0, "b", "waits"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.event_log == [] and w.stats().queued == 1  # not retried at once
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
