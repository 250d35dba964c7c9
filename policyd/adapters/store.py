"""The persistent store seam: overrides and cached evidence, each record with an expiry,
and the log of decision events.

Record values are opaque JSON documents; their typed (de)serialisation lives in
:mod:`policyd.codec.records`. The store never interprets them, so SQLite and Redis are
interchangeable behind :class:`Store`. Events go in and come out as
:class:`~policyd.core.event.Event` values; each backend keeps them as
:func:`~policyd.codec.records.event_to_json` documents.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from policyd.codec.records import event_from_json
from policyd.core.event import Event
from policyd.core.frozen import quick_init


class Kind(enum.Enum):
    """Record namespaces. Overrides are never dropped by ``flush``."""

    OVERRIDE = "override"
    STS = "sts"
    PROBE = "probe"
    # The last answers of a destination, per profile: kept through a resolver outage.
    ANSWER = "answer"


@quick_init
@dataclass(frozen=True, slots=True)
class Record:
    kind: Kind
    key: str
    value: str  # JSON text
    expires_at: float | None  # seconds since the epoch; None: never


class StoreError(Exception):
    """The store cannot be opened or used (corrupt, unreadable, unreachable)."""


class Store(Protocol):
    async def put(self, record: Record) -> None: ...

    async def get(self, kind: Kind, key: str) -> Record | None: ...

    async def delete(self, kind: Kind, key: str) -> bool: ...

    async def scan(self, kind: Kind) -> list[Record]:
        """Every record of a kind, expired ones included (callers decide)."""
        ...

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        """Drop cached evidence (never overrides) for one key, or all with None; cached
        MTA-STS policies only with ``mta_sts`` (they are trust on first use, RFC 8461 5)."""
        ...

    async def append_event(self, event: Event) -> None:
        """Record a decision that changed, for ``policyctl report``."""
        ...

    async def events(self, since: float) -> list[Event]:
        """Events with ``at >= since``, in the order they were appended. An entry this
        version cannot read (the one-line text of earlier versions, a damaged row) is
        skipped, and the number skipped is logged."""
        ...

    async def close(self) -> None: ...


def stored_event(raw: object) -> Event | None:
    """An event as a backend keeps it (its JSON document), or None for one this version
    cannot read: the one-line text of earlier versions, which cannot be read back safely
    (a reason quoting ``previous=`` passed for another field), or a damaged entry."""
    if not isinstance(raw, str):
        return None
    try:
        return event_from_json(raw)
    except ValueError:
        return None


# The log line for the entries :meth:`Store.events` skipped: (store name, count).
SKIPPED_EVENTS: Final = "%s: %d events skipped: not an event of this version"


@runtime_checkable
class ExpiringStore(Protocol):
    """A store that deletes expired records itself when asked (housekeeping)."""

    async def delete_expired(self, now: float) -> int: ...
