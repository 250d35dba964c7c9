"""Plain-integer counters that the daemon's parts bump and the metrics endpoint reads.

Counting must cost the hot path next to nothing, so nothing here locks, formats or
allocates: a counter is an ``int`` attribute or a one-element list shared by every cached
answer with the same labels, and :mod:`policyd.server.metrics` turns them into the
Prometheus text format only when scraped. Everything runs on the event loop's thread, so
the reader never sees a half-made update.

This module imports nothing from policyd: every layer may count.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

# Upper bounds (seconds) of the lookup latency histogram. The hot path answers in
# microseconds, the slow path waits for DNS, HTTPS and the lookup budget (8 s default).
LATENCY_BUCKETS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Bound on distinct label sets of one counter (profiles x levels is far below it); beyond
# it new label sets are counted under "other" so a bug cannot grow memory without end.
MAX_LABEL_SETS: Final = 256
OTHER: Final = "other"


class Histogram:
    """Bucket counts as integers; exported cumulatively, as Prometheus wants."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound), ending with (+inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class LabelledCounter:
    """Counts per label tuple; :meth:`cell` hands out the shared one-element list so a
    cached answer can be counted with ``cell[0] += 1`` and no hashing."""

    __slots__ = ("_cells",)

    def __init__(self) -> None:
        self._cells: dict[tuple[str, ...], list[int]] = {}

    def cell(self, *labels: str) -> list[int]:
        found = self._cells.get(labels)
        if found is None:
            if len(self._cells) >= MAX_LABEL_SETS:
                labels = (OTHER,) * len(labels)
                found = self._cells.get(labels)
            if found is None:
                found = self._cells[labels] = [0]
        return found

    def inc(self, *labels: str) -> None:
        self.cell(*labels)[0] += 1

    def items(self) -> list[tuple[tuple[str, ...], int]]:
        return sorted((labels, cell[0]) for labels, cell in self._cells.items())


@dataclass(slots=True)
class ServiceCounters:
    """What :class:`policyd.service.PolicyService` counts."""

    misses: int = 0  # slow-path lookups answered with a policy or NOTFOUND
    temp: int = 0  # slow-path lookups answered TEMP
    answers: LabelledCounter = field(default_factory=LabelledCounter)  # profile, level
    dry_run: LabelledCounter = field(default_factory=LabelledCounter)  # would-be answers
    hot: Histogram = field(default_factory=Histogram)  # sampled, see HOT_SAMPLE_EVERY
    slow: Histogram = field(default_factory=Histogram)


@dataclass(slots=True)
class StsCounters:
    """What :class:`policyd.sources.sts.StsSource` counts."""

    fetches: int = 0  # HTTPS policy fetches started
    fetch_failures: int = 0  # fetches that failed or returned an invalid policy
    refresh_failures: int = 0  # failed TXT lookups or fetches while a policy was cached


@dataclass(slots=True)
class ProbeCounters:
    """What :class:`policyd.sources.probe.ProbeSource` counts."""

    verdicts: LabelledCounter = field(default_factory=LabelledCounter)  # per MX address
    held: int = 0  # probes whose weaker result damping held back


@dataclass(slots=True)
class DnsCounters:
    """Queries the resolver adapter sent (cache hits are not queries), by outcome."""

    outcomes: LabelledCounter = field(default_factory=LabelledCounter)
