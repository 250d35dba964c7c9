"""``policyctl report`` as plain aggregation over typed values.

:func:`build_report` takes the decision events since a time, the latest verdict per
(profile, destination) and read-only views of the cached probe and MTA-STS evidence, and
returns a :class:`Report`. It does no I/O and reads no clock: the caller passes ``now``
and the limits, and turns the report into the control protocol's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from policyd.core.event import Event
from policyd.core.evidence import ProbeState, StsEvidence
from policyd.core.names import is_address
from policyd.core.types import Outcome, Rule, Verdict


@dataclass(frozen=True, slots=True)
class ReportLimits:
    changes: int  # the newest level changes listed
    names: int  # destinations listed per level, held, TEMP and failing MTA-STS

    def __post_init__(self) -> None:
        if self.changes < 0 or self.names < 0:
            raise ValueError("report limits must be non-negative")


@dataclass(frozen=True, slots=True)
class TempNow:
    """A destination whose latest answer is TEMP."""

    key: str
    profile: str
    reason: str


@dataclass(frozen=True, slots=True)
class StsFailing:
    """A destination whose MTA-STS policy could not be fetched lately."""

    key: str
    error: str
    cached: bool  # a cached policy still applies


@dataclass(frozen=True, slots=True)
class Report:
    since: float
    now: float
    changes: tuple[Event, ...]  # oldest first
    # profile -> level word -> destinations (at most limits.names per level), sorted
    levels: Mapping[str, Mapping[str, tuple[str, ...]]]
    # profile -> decision step -> destinations decided by it
    rules: Mapping[str, Mapping[Rule, int]]
    temp: tuple[TempNow, ...]
    held: tuple[tuple[str, ProbeState], ...]  # destinations whose probe damping holds
    sts_failing: tuple[StsFailing, ...]


def build_report(
    events: Sequence[Event],
    latest: Mapping[tuple[str, str], Verdict],
    *,
    since: float,
    now: float,
    limits: ReportLimits,
    level_of: Callable[[Verdict], str],
    probe_of: Callable[[str], ProbeState | None],
    sts_of: Callable[[str], StsEvidence],
) -> Report:
    """The report over ``events`` (in the order appended) and ``latest`` (the verdict last
    decided per (profile name, destination key)); ``level_of`` words a verdict as events
    do, ``probe_of`` gives a destination's cached probe state and ``sts_of`` a policy
    domain's cached MTA-STS evidence."""
    changes = tuple(e for e in events if e.at >= since)
    changes = changes[-limits.changes :] if limits.changes else ()
    levels: dict[str, dict[str, list[str]]] = {}
    rules: dict[str, dict[Rule, int]] = {}
    temp: list[TempNow] = []
    keys: set[str] = set()
    for (profile, key), verdict in sorted(latest.items(), key=lambda item: item[0]):
        keys.add(key)
        by_level = levels.setdefault(profile, {}).setdefault(level_of(verdict), [])
        if len(by_level) < limits.names:
            by_level.append(key)
        by_rule = rules.setdefault(profile, {})
        by_rule[verdict.rule] = by_rule.get(verdict.rule, 0) + 1
        if verdict.outcome is Outcome.TEMP and len(temp) < limits.names:
            temp.append(TempNow(key, profile, verdict.reason))
    held: list[tuple[str, ProbeState]] = []
    sts_failing: list[StsFailing] = []
    for key in sorted(keys):
        state = probe_of(key)
        if state is not None and state.pending is not None and len(held) < limits.names:
            held.append((key, state))
        domain = policy_domain(key)
        if domain is None:
            continue
        sts = sts_of(domain)
        if sts.error and len(sts_failing) < limits.names:
            sts_failing.append(StsFailing(key, sts.error, sts.policy is not None))
    return Report(
        since,
        now,
        changes,
        {p: {level: tuple(names) for level, names in by.items()} for p, by in levels.items()},
        rules,
        tuple(temp),
        tuple(held),
        tuple(sts_failing),
    )


def policy_domain(key: str) -> str | None:
    """The domain whose MTA-STS policy applies to a destination key: the domain of
    ``example.com`` or ``example.com:587``, the smart host ``[smtp.relay.example]`` on
    port 25 (RFC 8461 3.4); None for other bracketed next hops, IP literals and the
    parent-domain form (``.example.com``)."""
    if key.startswith("["):
        host, _, port = key[1:].partition("]")
        return None if port or is_address(host) else host
    name = key.partition(":")[0]
    return None if name.startswith(".") else name
