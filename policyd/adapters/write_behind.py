"""Store writes off the answer's path: queued in memory, written in batches.

A lookup that changes a decision records an event and the answer to keep through a
resolver outage; writing each at once would put a store round trip (an SQLite transaction
on its thread) behind every first contact. :class:`WriteBehind` queues them and writes
everything queued once per ``interval`` seconds, in one transaction where the store offers
:meth:`BatchStore.write_batch`, or sooner once ``batch_size`` writes wait: preparing a
batch runs on the event loop (an event's JSON, a few microseconds each), so a flood of
first contacts gets many small batches, each a short pause, not one long one a second.
Both queues are bounded: beyond the bound a write is dropped and counted (``dropped``),
never waited for; a failed batch is logged, counted and dropped, and the loop goes on.
Records under the same (kind, key) coalesce: the newest wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.core.event import Event

# Seconds between batches: events and kept answers reach the store this late at most
# (policyctl report flushes first, so it never misses one).
DEFAULT_INTERVAL: Final = 1.0
# Queued writes of each kind at most (about 200 bytes each): a store that stalls for
# minutes under a flood costs at most a few MB, and the excess is counted, not kept.
DEFAULT_MAX_QUEUED: Final = 10_000
# Writes that start a batch before the interval ends: about 2 ms of the event loop's time
# to prepare (measured: 2,600 events took 10 ms), where a second's flood of first contacts
# in one batch paused every lookup for 15 ms.
DEFAULT_BATCH_SIZE: Final = 500

log = logging.getLogger("policyd")


@runtime_checkable
class BatchStore(Protocol):
    async def write_batch(self, records: Sequence[Record], events: Sequence[Event]) -> None:
        """Put every record and append every event in one transaction."""
        ...


@dataclass(frozen=True, slots=True)
class WriteStats:
    queued: int  # records and events waiting
    written: int  # since start
    dropped: int  # refused because a queue was full, or lost with a failed batch


class WriteBehind:
    def __init__(
        self,
        store: Store,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_queued: int = DEFAULT_MAX_QUEUED,
        batch_size: int = DEFAULT_BATCH_SIZE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval <= 0 or max_queued < 1 or batch_size < 1:
            raise ValueError("need interval > 0, max_queued >= 1 and batch_size >= 1")
        self._store = store
        self._interval = interval
        self._sleep = sleep  # tests pass one that lets no time pass
        self._max = max_queued
        self._batch = batch_size
        self._full = asyncio.Event()  # batch_size writes wait: the next batch starts now
        self._failing = False  # the latest batch failed
        self._records: dict[tuple[Kind, str], Record] = {}
        self._events: deque[Event] = deque()
        self._lock = asyncio.Lock()  # one batch at a time, in order
        self.written = 0
        self.dropped = 0

    def put(self, record: Record) -> None:
        slot = (record.kind, record.key)
        if slot not in self._records and len(self._records) >= self._max:
            self.dropped += 1
            return
        self._records[slot] = record
        self._count()

    def event(self, event: Event) -> None:
        if len(self._events) >= self._max:
            self.dropped += 1
            return
        self._events.append(event)
        self._count()

    def _count(self) -> None:
        if len(self._records) + len(self._events) >= self._batch:
            self._full.set()

    def stats(self) -> WriteStats:
        return WriteStats(len(self._records) + len(self._events), self.written, self.dropped)

    async def run(self) -> None:
        """Write a batch every interval, or as soon as batch_size writes wait, until
        cancelled; then write what is left."""
        try:
            while True:
                await self._due()
                await self.flush()
        finally:
            if self._records or self._events:
                await asyncio.shield(self.flush())

    async def _due(self) -> None:
        """Until the interval has passed or a batch is full, whichever comes first; after a
        failed batch, the whole interval (a store that keeps failing logs once a second)."""
        if self._failing:
            await self._sleep(self._interval)
        elif not self._full.is_set():
            waits = {
                asyncio.ensure_future(self._sleep(self._interval)),
                asyncio.ensure_future(self._full.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        self._full.clear()

    async def flush(self) -> None:
        """Write everything queued now. A store error is logged and the batch counted as
        dropped: the next batch tries again with new writes."""
        async with self._lock:
            records = list(self._records.values())
            events = list(self._events)
            self._records.clear()
            self._events.clear()
            if not records and not events:
                return
            try:
                await self._write(records, events)
            except StoreError as exc:
                self._failing = True
                self.dropped += len(records) + len(events)
                log.error(
                    "store: %d writes lost (events, kept answers): %s",
                    len(records) + len(events),
                    exc,
                )
                return
            self._failing = False
            self.written += len(records) + len(events)

    async def _write(self, records: list[Record], events: list[Event]) -> None:
        store = self._store
        if isinstance(store, BatchStore):
            await store.write_batch(records, events)
            return
        for record in records:
            await store.put(record)
        for event in events:
            await store.append_event(event)
