"""A :class:`~policyd.adapters.store.Store` that counts the errors of the store it wraps.

The daemon wraps whichever store it opened (SQLite or Redis), so the metrics endpoint can
export ``policyd_store_errors_total`` without either backend knowing about metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from policyd.adapters.store import ExpiringStore, Kind, Record, Store, StoreError
from policyd.adapters.write_behind import BatchStore
from policyd.core.event import Event

T = TypeVar("T")


class CountedStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.errors = 0  # StoreError raised by any call, since start

    async def _counted(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except StoreError:
            self.errors += 1
            raise

    async def put(self, record: Record) -> None:
        await self._counted(self.inner.put(record))

    async def get(self, kind: Kind, key: str) -> Record | None:
        return await self._counted(self.inner.get(kind, key))

    async def delete(self, kind: Kind, key: str) -> bool:
        return await self._counted(self.inner.delete(kind, key))

    async def scan(self, kind: Kind) -> list[Record]:
        return await self._counted(self.inner.scan(kind))

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        return await self._counted(self.inner.flush(key, mta_sts=mta_sts))

    async def append_event(self, event: Event) -> None:
        await self._counted(self.inner.append_event(event))

    async def events(self, since: float) -> list[Event]:
        return await self._counted(self.inner.events(since))

    async def write_batch(self, records: Sequence[Record], events: Sequence[Event]) -> None:
        """The inner store's one-transaction batch where it has one, else call by call."""
        inner = self.inner
        if isinstance(inner, BatchStore):
            await self._counted(inner.write_batch(records, events))
            return
        for record in records:
            await self.put(record)
        for event in events:
            await self.append_event(event)

    async def delete_expired(self, now: float) -> int:
        """Housekeeping: 0 for a store that does not delete expired records itself."""
        if isinstance(self.inner, ExpiringStore):
            return await self._counted(self.inner.delete_expired(now))
        return 0

    async def close(self) -> None:
        await self.inner.close()
