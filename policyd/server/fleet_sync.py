"""What a host does with the fleet's change messages (see policyd.adapters.fleet_redis).

An override message makes the host read that one override from the shared store again; a
flush message drops what its memory holds for the key (the store was flushed by the
sender). When the link (re)connects every override is read again, which covers messages
missed while it was down; the periodic reload stays as the last fallback.
"""

from __future__ import annotations

import logging
from typing import Protocol

from policyd.adapters.store import StoreError
from policyd.codec.fleet import Change, ChangeKind

log = logging.getLogger("policyd.fleet")


class ServiceLike(Protocol):
    async def reload_override(self, key: str) -> None: ...

    def forget(self, key: str | None, *, mta_sts: bool = True) -> None: ...

    async def load_overrides(self) -> None: ...


class FleetSync:
    def __init__(self, service: ServiceLike) -> None:
        self._service = service

    async def apply(self, change: Change) -> None:
        if change.kind is ChangeKind.FLUSH:
            self._service.forget(change.key, mta_sts=change.mta_sts)
            what = change.key or "everything"
            sts = " (MTA-STS policies included)" if change.mta_sts else ""
            log.info("fleet: %s flushed %s%s", change.origin or "?", what, sts)
            return
        assert change.key is not None  # Change enforces it for overrides
        try:
            await self._service.reload_override(change.key)
        except StoreError as exc:
            log.error("fleet: override %s not reloaded (next periodic reload): %s", change.key, exc)

    async def resync(self) -> None:
        try:
            await self._service.load_overrides()
        except StoreError as exc:
            log.error("fleet: overrides not reloaded (next periodic reload): %s", exc)
