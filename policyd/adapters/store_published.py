"""A store that tells the fleet about the changes every host must apply at once.

Wraps the shared store: after an override is written or deleted, or evidence is flushed,
a :class:`~policyd.codec.fleet.Change` is published (see
:mod:`policyd.adapters.fleet_redis`). The write comes first, so a host that reads the store
on the message finds the new state. Publishing never fails the write: a message not sent
is covered by every host's periodic override reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from policyd.adapters.store import Kind, Record, Store
from policyd.codec.fleet import Change, ChangeKind
from policyd.core.event import Event

Publish = Callable[[Change], Awaitable[None]]


class PublishingStore:
    def __init__(self, inner: Store, publish: Publish) -> None:
        self._inner = inner
        self._publish = publish

    async def put(self, record: Record) -> None:
        await self._inner.put(record)
        if record.kind is Kind.OVERRIDE:
            await self._publish(Change(ChangeKind.OVERRIDE, record.key))

    async def get(self, kind: Kind, key: str) -> Record | None:
        return await self._inner.get(kind, key)

    async def delete(self, kind: Kind, key: str) -> bool:
        removed = await self._inner.delete(kind, key)
        if kind is Kind.OVERRIDE:
            await self._publish(Change(ChangeKind.OVERRIDE, key))
        return removed

    async def scan(self, kind: Kind) -> list[Record]:
        return await self._inner.scan(kind)

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        count = await self._inner.flush(key, mta_sts=mta_sts)
        await self._publish(Change(ChangeKind.FLUSH, key, mta_sts=mta_sts))
        return count

    async def append_event(self, event: Event) -> None:
        await self._inner.append_event(event)

    async def events(self, since: float) -> list[Event]:
        return await self._inner.events(since)

    async def close(self) -> None:
        await self._inner.close()
