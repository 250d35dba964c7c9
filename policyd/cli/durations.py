"""Durations as a postmaster types and reads them: ``30m``, ``12h``, ``7d``, ``1h30m``.

Command-line syntax only: the control protocol carries seconds.
"""

from __future__ import annotations

import re
from typing import Final

from policyd.codec.control import MAX_DURATION

_DURATION = re.compile(r"(\d{1,10})([smhdw]?)")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DurationError(ValueError):
    """A duration policyctl cannot read, with a message for the postmaster."""


def parse_duration(text: str) -> int:
    """``90``, ``30m``, ``12h``, ``7d``, ``1w`` or a sum such as ``1h30m``, in seconds."""
    text = text.strip().lower()
    if not text:
        raise DurationError("empty duration")
    total, pos = 0, 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise DurationError(
                f"bad duration {text[:32]!r}: use a number with s, m, h, d or w (30m, 12h, 7d)"
            )
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not 0 < total <= MAX_DURATION:
        raise DurationError(f"duration {text[:32]!r} out of range")
    return total


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m``, ``2h``, ``2h5m``, ``3d``, ``2w``."""
    secs = max(0, round(seconds))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400:
        hours, mins = divmod(secs // 60, 60)
        return f"{hours}h{mins}m" if mins and hours < 10 else f"{hours}h"
    days = secs // 86400
    if days >= 14 and days % 7 == 0:
        return f"{days // 7}w"
    return f"{days}d"
