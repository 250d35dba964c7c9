"""RedisFleet links run by a test: started beside it, waited for, and always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from policyd.adapters.claims import Work
from policyd.adapters.fleet_redis import ChangeHandler, RedisFleet, ResyncHandler
from policyd.codec.fleet import Change

POLL: Final = 0.02  # seconds between two looks at a condition
STOP_DEADLINE: Final = 10.0  # seconds for a cancelled link to end (shutdown waits for it)


async def ignore_changes(change: Change) -> None:
    del change


async def no_resync() -> None:
    return None


def value(text: str) -> Work:
    """Work that does nothing but answer ``text``."""

    async def work() -> str:
        return text

    return work


async def until(ok: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def running(
    fleet: RedisFleet,
    on_change: ChangeHandler = ignore_changes,
    on_connect: ResyncHandler = no_resync,
) -> AsyncIterator[RedisFleet]:
    """``fleet`` subscribed (not yet up) for the block; after it the link task must end
    promptly when cancelled, and the connections are closed."""
    task = asyncio.create_task(fleet.run(on_change, on_connect))
    try:
        yield fleet
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_DEADLINE)
        await fleet.close()
        assert done, "the fleet link task did not end when cancelled"
