"""Times to a whole second, one float object shared by every time within that second.

A million cached destinations each holding a float of its own would spend 24 bytes apiece
on times that differ by less than the precision anyone needs; rounding to the second lets
them share one object per second instead.
"""

from __future__ import annotations

import math


class Seconds:
    """A time to a whole second (down, or up with ``up=True``), as one float object shared
    by every call within that second (a float of its own per destination is 24 bytes)."""

    __slots__ = ("_round", "last")

    def __init__(self, *, up: bool = False) -> None:
        self._round = math.ceil if up else math.floor
        self.last = 0.0

    def __call__(self, at: float) -> float:
        whole = float(self._round(at))
        if whole == self.last:
            return self.last
        self.last = whole
        return whole

    def forget(self) -> None:
        """Share no object with times handed out before (they were moved)."""
        self.last = 0.0
