"""What the MTA-STS source (:mod:`policyd.sources.sts`) keeps: its ``[sts]`` settings and,
per domain, the last policy, the state of its discovery and when to look again."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Final

from policyd.core.evidence import StsMode, StsPolicy
from policyd.core.sts import describe_mx

NEVER: Final = -math.inf  # a time that has not happened


@dataclass(frozen=True, slots=True)
class StsSettings:
    """The ``[sts]`` settings; all in seconds except the fetch count."""

    # How long a lookup without a cached policy waits for discovery and fetch before it
    # answers "pending": far below Postfix's socketmap timeout (100 s) and smtp's.
    cold_budget: float = 3.0
    # Refetch a cached policy this old even when its id is unchanged (RFC 8461 3.3 and 10.2
    # recommend proactive refresh); short-lived policies are refetched at half their max_age.
    refresh_interval: float = 86400.0
    # After a failed TXT lookup or fetch, no new attempt for that domain sooner than this
    # (RFC 8461 3.3 and 10.3: rate-limit fetch attempts).
    retry_after_failure: float = 300.0
    # How often a lookup re-reads the TXT record of a domain in use, to see a changed id
    # (RFC 8461 3.1), or to find a policy for a domain that had none.
    recheck_interval: float = 3600.0
    max_concurrent_fetches: int = 16
    # Discoveries and refreshes waiting for a slot; beyond it the oldest background
    # discovery is dropped for urgent work, or the new one is refused (and counted).
    max_queued_fetches: int = 1000

    def __post_init__(self) -> None:
        for name in ("cold_budget", "refresh_interval", "retry_after_failure", "recheck_interval"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"sts {name} must not be negative")
        for name in ("max_concurrent_fetches", "max_queued_fetches"):
            if getattr(self, name) < 1:
                raise ValueError(f"sts {name} must be at least 1")


class DomainState:
    """What the source knows about one domain (mutable; private to :mod:`policyd.sources.sts`)."""

    __slots__ = (
        "absent_until",
        "checked_at",
        "error",
        "failed_at",
        "job",
        "last",
        "refused",
        "waiters",
    )

    def __init__(self) -> None:
        # The last policy fetched successfully, any mode; mode none is kept only in memory
        # so an unchanged id is not refetched, and never counts as a cached policy.
        self.last: StsPolicy | None = None
        self.checked_at = NEVER  # last TXT answer (not failure)
        self.failed_at = NEVER  # last failed lookup or fetch
        self.absent_until = NEVER  # no policy published: do not look again before this
        self.error = ""
        self.job: asyncio.Future[None] | None = None  # queued or running discovery/refresh
        self.waiters = 0  # lookups waiting for the job right now
        self.refused = False  # the last job was not run (queue full): not known yet

    def policy(self, now: float) -> StsPolicy | None:
        last = self.last
        if last is None or last.mode is StsMode.NONE or not last.valid_at(now):
            return None
        return last

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done()


def describe_policy(policy: StsPolicy) -> str:
    mx = describe_mx(policy.mx) or "-"
    return f"id={policy.policy_id} mode={policy.mode.value} mx={mx} max_age={policy.max_age}"


def same_policy(a: StsPolicy | None, b: StsPolicy | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.policy_id, a.mode, a.mx, a.max_age) == (b.policy_id, b.mode, b.mx, b.max_age)
