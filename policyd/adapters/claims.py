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
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

Work = Callable[[], Awaitable[str]]


class ClaimBusy(Exception):
    """Another worker held the claim for longer than the caller may wait."""


class WorkKind(StrEnum):
    """What a piece of claimed work is; named in the fleet's keys and counters."""

    PROBE = "probe"  # a STARTTLS probe of one remote address and port
    STS = "sts"  # an MTA-STS policy fetch for one policy domain


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of claimed work and the names and times it is claimed under.

    ``claim`` names what must not be done twice at once; ``result`` what the outcome is
    shared under for ``keep`` seconds. ``lease`` bounds how long a claim holder may take
    before others take over (so it must exceed the work's own time bound); after the work
    the claim stays held ``rest`` seconds more (spacing between two sessions to one
    address).
    """

    kind: WorkKind
    claim: str
    result: str
    work: Work
    lease: float
    keep: float
    rest: float = 0.0

    def __post_init__(self) -> None:
        if not (self.claim and self.result):
            raise ValueError(f"{self.kind} work needs a claim and a result name")
        if self.lease <= 0:
            raise ValueError(f"{self}: the lease must be positive")
        if self.keep < 0 or self.rest < 0:
            raise ValueError(f"{self}: keep and rest cannot be negative")

    def __str__(self) -> str:
        return f"{self.kind} {self.claim}"


class WorkClaims(Protocol):
    async def once(self, job: Job) -> str:
        """Run ``job.work`` unless another worker is running it under ``job.claim`` or
        shared a result under ``job.result`` within the last ``job.keep`` seconds; its
        result text either way. :class:`ClaimBusy` when the claim stayed held past the
        wait bound; exceptions of the work propagate."""
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

    async def once(self, job: Job) -> str:
        # job.result and job.keep go unused: nothing is shared within one host, its
        # sources coalesce already.
        key = (job.kind, job.claim)
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        held = False
        try:
            try:
                async with asyncio.timeout(job.lease + job.rest + self._grace):
                    await slot.lock.acquire()
            except TimeoutError:
                raise ClaimBusy(f"{job}: busy for more than {job.lease:g}s") from None
            held = True
            return await job.work()
        finally:
            if held and job.rest > 0:
                asyncio.get_running_loop().call_later(job.rest, self._done, key, slot, True)
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
