"""A decision that changed: the structured event behind ``policyctl report``.

The service records one :class:`Event` each time the answer for a (profile, destination)
changes, and the first time one is decided. Every field is its own value, so a reason
that quotes outside text (an override comment, a TLS alert) can never pass for another
field (the review's D3: a comment ``previous=dane-only`` faked a level change when the
event was one line of text parsed back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policyd.core.frozen import quick_init
from policyd.core.types import Rule, one_line


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    """The answer for ``key`` under ``profile`` became ``level`` at ``at``.

    ``level`` and ``previous`` are level words as logs and reports show them (``TEMP``,
    ``NOTFOUND``, or the policy without blanks, ``secure,match=...``); ``previous`` is
    None the first time the destination is decided since the daemon remembered it.
    """

    at: float  # seconds since the epoch
    key: str  # the destination key (Destination.key)
    profile: str  # the profile's name
    rule: Rule  # the decision step that chose the new answer
    level: str
    reason: str
    previous: str | None = None
    dry_run: bool = False  # decided for a dry-run profile: Postfix was told NOTFOUND

    def __post_init__(self) -> None:
        if not math.isfinite(self.at) or self.at < 0:
            raise ValueError("event time must be a finite, non-negative number")
        words = (self.key, self.profile, self.level, self.previous)
        if not all(w is None or _is_word(w) for w in words):
            raise ValueError("event key, profile and levels must be words of printable text")
        if not self.reason.isprintable():
            object.__setattr__(self, "reason", one_line(self.reason))


def _is_word(text: str) -> bool:
    return bool(text) and text.isprintable() and " " not in text
