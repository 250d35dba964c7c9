"""Steps of the wall clock against real elapsed time (security review L8, "wall clock").

MTA-STS policies expire by the wall clock: their ``fetched_at`` is a wall time, kept in the
store across restarts. Within one run the wall clock is not trusted to move only as real
time passes: a bad NTP server or a mistaken ``date -s`` steps it. A forward step of a week
would expire every cached policy at once (the downgrade the cache exists to prevent); a
backward step would serve policies past their ``max_age``.

:class:`ClockSteps` compares the wall clock with a clock nobody sets: CLOCK_BOOTTIME where
there is one (Linux; it runs on through a suspend, unlike CLOCK_MONOTONIC), else the
monotonic clock. Their difference stays the same while nobody steps the wall clock (both
follow NTP's rate corrections alike); a change beyond :data:`STEP_TOLERANCE` is a step, and
whoever holds wall times moves them by it, so that each keeps the age it really has. Wall
times read from the store at start are aged by the wall clock of that moment, the only
clock that survives a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

# A change of (wall - elapsed) up to this is no step: two clock reads apart, a leap
# second (seconds).
STEP_TOLERANCE: Final = 2.0


def real_elapsed() -> float:
    """Seconds on a clock that only moves forward, at the rate real time passes."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic()
    return time.clock_gettime(boottime)


class ClockSteps:
    __slots__ = ("_elapsed", "_offset", "_wall")

    def __init__(self, wall: Callable[[], float], elapsed: Callable[[], float]) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self._offset = wall() - elapsed()

    def step(self) -> float:
        """How far the wall clock was stepped since the last step found (0.0: not)."""
        offset = self._wall() - self._elapsed()
        step = offset - self._offset
        if abs(step) <= STEP_TOLERANCE:
            return 0.0
        self._offset = offset
        return step
