"""What the MTA-STS source (:mod:`policyd.sources.sts`) keeps per domain: the last policy,
the state of its discovery and when to look again."""

from __future__ import annotations

import asyncio
import math
from typing import Final

from policyd.core.evidence import StsMode, StsPolicy
from policyd.core.sts import describe_mx

NEVER: Final = -math.inf  # a time that has not happened


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
