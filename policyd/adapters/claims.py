"""The work-claim seam: one host of a fleet does a piece of work, the others use its result.

Sources never talk to Redis. They hand a unit of work (probe this address, fetch this
policy) to a :class:`WorkClaims` with two names: the *claim*, what must not be done twice
at once (one STARTTLS session per remote address and port), and the *result*, under which
the outcome is shared (the findings for that address as one MX name). The Redis
implementation (:mod:`policyd.adapters.fleet_redis`) shares them across hosts; the local
one here, used with SQLite or when Redis is unreachable, only keeps this host to one
piece of work per claim at a time.

Results are text (JSON written by the caller's codec); the seam never interprets them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

Work = Callable[[], Awaitable[str]]


class ClaimBusy(Exception):
    """Another worker held the claim for longer than the caller may wait."""


class WorkClaims(Protocol):
    async def once(
        self,
        kind: str,
        claim: str,
        result: str,
        work: Work,
        *,
        lease: float,
        keep: float,
        rest: float = 0.0,
    ) -> str:
        """Run ``work`` unless another worker is running it under ``claim`` or shared a
        result under ``result`` within the last ``keep`` seconds; its result text either
        way. ``lease`` bounds how long a claim holder may take before others take over
        (so it must exceed the work's own time bound); after the work the claim stays
        held ``rest`` seconds more (spacing between two sessions to one address).
        :class:`ClaimBusy` when the claim stayed held past the wait bound; exceptions of
        ``work`` propagate."""
        ...


class _Slot:
    """One claim on this host: its lock and everyone waiting for, holding or resting it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class LocalClaims:
    """One piece of work per claim at a time on this host; nothing shared, nothing kept.

    The wait for a busy claim is bounded by the holder's lease and rest plus ``grace``: a
    queue of work for one remote address (many MX names on one IP) cannot hold a worker
    forever.
    """

    def __init__(self, *, grace: float = 1.0) -> None:
        self._grace = grace
        self._slots: dict[tuple[str, str], _Slot] = {}

    async def once(
        self,
        kind: str,
        claim: str,
        result: str,
        work: Work,
        *,
        lease: float,
        keep: float,
        rest: float = 0.0,
    ) -> str:
        del result, keep  # nothing is shared within one host: its sources coalesce already
        key = (kind, claim)
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        held = False
        try:
            try:
                async with asyncio.timeout(lease + rest + self._grace):
                    await slot.lock.acquire()
            except TimeoutError:
                raise ClaimBusy(f"{kind} {claim}: busy for more than {lease:g}s") from None
            held = True
            return await work()
        finally:
            if held and rest > 0:
                asyncio.get_running_loop().call_later(rest, self._done, key, slot, True)
            else:
                self._done(key, slot, held)

    def _done(self, key: tuple[str, str], slot: _Slot, held: bool) -> None:
        if held:
            slot.lock.release()
        slot.users -= 1
        if slot.users == 0 and self._slots.get(key) is slot:
            del self._slots[key]  # the table holds only claims in use

    @property
    def in_use(self) -> int:
        """Claims held, resting or waited for now (tests: the table does not grow)."""
        return len(self._slots)
