"""Alerts: the events that need a person, as one greppable log line and a counter each.

Every alert is logged at warning level as ``alert=<kind> <subject-key>=<subject> ...``
(key=value pairs, the kind first), so ``grep 'alert='`` finds all of them and
``grep 'alert=level-dropped'`` one kind. :mod:`policyd.server.metrics` exports the counts as
``policyd_alerts_total{alert="<kind>"}``. An alert that is a state (the resolver does not
validate) is also kept as ``active`` until it clears.

Like :mod:`policyd.counters`, this module imports nothing from policyd.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Final

# Distinct subjects remembered per alert kind (to log each episode once); beyond it the
# oldest are forgotten, which at worst logs an ongoing episode again.
MAX_SUBJECTS: Final = 100_000


class AlertKind(enum.Enum):
    LEVEL_DROPPED = "level-dropped"  # a destination's answer got weaker, after damping
    STS_STALE = "sts-stale"  # an MTA-STS policy could not be refreshed for too long
    DANE_TEMP = "dane-temp"  # a DANE destination has answered TEMP for too long
    RESOLVER = "resolver-not-validating"  # the resolver gives no AD bit for a signed name


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """``[alerts]`` in policyd.toml. Times in seconds; 0 turns that alert off."""

    # An MTA-STS policy not confirmed (fetched, or its TXT id checked) for this long,
    # while refreshes fail. RFC 8461 3.3 asks senders to alert when refreshes fail.
    sts_stale_after: float = 172800.0
    # A destination with DANE or DNSSEC failure answering TEMP for this long.
    dane_temp_after: float = 3600.0
    # How often the resolver's validation is checked (and at start).
    resolver_check_interval: float = 3600.0
    # A name whose DNSKEY records must validate: the root is signed everywhere.
    resolver_check_name: str = "."

    def __post_init__(self) -> None:
        if not self.resolver_check_name or any(c.isspace() for c in self.resolver_check_name):
            raise ValueError("resolver_check_name must be a DNS name")


class Alerts:
    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logging.getLogger("policyd")
        self.counts: dict[AlertKind, int] = dict.fromkeys(AlertKind, 0)
        self._open: dict[AlertKind, dict[str, None]] = {k: {} for k in AlertKind}

    def fire(self, kind: AlertKind, subject: str, **details: object) -> None:
        """Log and count one alert, every time it is called."""
        self.counts[kind] += 1
        shown = " ".join(f"{k}={_value(v)}" for k, v in details.items())
        self._log.warning("alert=%s %s%s", kind.value, subject, f" {shown}" if shown else "")

    def open(self, kind: AlertKind, key: str, subject: str, **details: object) -> bool:
        """Fire once per episode of ``key`` (until :meth:`close`); True when it fired."""
        episodes = self._open[kind]
        if key in episodes:
            return False
        if len(episodes) >= MAX_SUBJECTS:
            del episodes[next(iter(episodes))]
        episodes[key] = None
        self.fire(kind, subject, **details)
        return True

    def close(self, kind: AlertKind, key: str) -> bool:
        """End an episode; True when one was open."""
        return self._open[kind].pop(key, 0) is None

    def is_open(self, kind: AlertKind, key: str) -> bool:
        return key in self._open[kind]

    def open_subjects(self, kind: AlertKind) -> list[str]:
        return list(self._open[kind])

    def active(self, kind: AlertKind) -> int:
        """Episodes of a kind open now."""
        return len(self._open[kind])


def _value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
