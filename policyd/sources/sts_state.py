"""What the MTA-STS source (:mod:`policyd.sources.sts`) keeps per domain: the last policy,
the state of its discovery and when to look again."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from typing import Final

from policyd.adapters.dns_answer import DnsAnswer
from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.codec.mtasts import ParsedPolicy
from policyd.codec.records import sts_policy_to_json
from policyd.core.evidence import StsMode, StsPolicy
from policyd.core.names import fold
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
        "mx_checked_at",
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
        self.mx_checked_at = NEVER  # last comparison of the MX hosts with an enforce policy

    def policy(self, now: float) -> StsPolicy | None:
        last = self.last
        if last is None or last.mode is StsMode.NONE or not last.valid_at(now):
            return None
        return last

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done()

    @property
    def only_absence(self) -> bool:
        """All there is to remember is when to look for a record again."""
        return not (
            self.last is not None
            or self.job is not None
            or self.refused
            or self.error
            or self.failed_at != NEVER
            or self.absent_until == NEVER
        )

    def shift(self, step: float) -> None:
        """The wall clock was stepped by ``step`` seconds: move every time held here with
        it, so that the policy keeps its real age (:mod:`policyd.sources.clock_steps`)."""
        if self.last is not None:
            self.last = dataclasses.replace(self.last, fetched_at=self.last.fetched_at + step)
        self.checked_at += step  # NEVER (-inf) stays NEVER
        self.failed_at += step
        self.absent_until += step
        self.mx_checked_at += step


def mx_names(domain: str, mx: DnsAnswer) -> tuple[str, ...]:
    """The domain's MX host names from its MX answer: the domain itself when it has no MX
    RRset (implicit MX, RFC 5321 5.1); none when the lookup failed or nothing exists."""
    if mx.failed or mx.nxdomain:
        return ()
    if mx.nodata:
        return (fold(domain),)
    return tuple(r.exchange for r in mx.mx if r.exchange is not None)


def log_parsed(log: logging.Logger, domain: str, parsed: ParsedPolicy, policy: StsPolicy) -> None:
    """What parsing a fetched policy left out or changed, as warnings."""
    if parsed.capped:
        log.warning(
            "%s: mta-sts max_age %d capped to %d", domain, parsed.declared_max_age, policy.max_age
        )
    if parsed.ignored:
        log.warning("%s: mta-sts repeated fields ignored: %s", domain, ",".join(parsed.ignored))
    if parsed.ignored_mx:
        log.warning(
            "%s: mta-sts mx patterns that are IP addresses ignored: %s",
            domain,
            describe_mx(parsed.ignored_mx),
        )


def describe_policy(policy: StsPolicy) -> str:
    mx = describe_mx(policy.mx) or "-"
    return f"id={policy.policy_id} mode={policy.mode.value} mx={mx} max_age={policy.max_age}"


def same_policy(a: StsPolicy | None, b: StsPolicy | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.policy_id, a.mode, a.mx, a.max_age) == (b.policy_id, b.mode, b.mx, b.max_age)


def log_failure(
    log: logging.Logger, domain: str, reason: str, kept: StsPolicy | None, now: float
) -> None:
    if kept is None:
        log.warning("%s: mta-sts %s", domain, reason)
    else:
        log.warning(
            "%s: mta-sts %s; keeping cached policy id=%s for %d more seconds",
            domain,
            reason,
            kept.policy_id,
            int(kept.expires_at - now),
        )


def unrefreshed(
    domains: dict[str, DomainState], now: float, older_than: float
) -> list[tuple[str, float, str]]:
    """(domain, seconds, last error) of cached policies neither fetched nor confirmed by
    their TXT id for ``older_than`` seconds while refreshes fail (RFC 8461 3.3)."""
    out: list[tuple[str, float, str]] = []
    for domain, entry in domains.items():
        policy = entry.policy(now)
        if policy is None or not entry.error:
            continue
        age = now - max(policy.fetched_at, entry.checked_at)
        if age > older_than:
            out.append((domain, age, entry.error))
    return out


def log_mismatch(
    log: logging.Logger, domain: str, hosts: tuple[str, ...], policy: StsPolicy
) -> None:
    log.info(
        "%s: mta-sts: no MX host (%s) matches the cached policy id=%s mx=%s: "
        "checking for a new policy now",
        domain,
        describe_mx(hosts),
        policy.policy_id,
        describe_mx(policy.mx),
    )


async def persist(store: Store, log: logging.Logger, domain: str, policy: StsPolicy | None) -> None:
    """Save a domain's policy (None: delete it); a store error is logged, the policy in
    memory stays in force."""
    try:
        if policy is None:
            await store.delete(Kind.STS, domain)
        else:
            await store.put(Record(Kind.STS, domain, sts_policy_to_json(policy), policy.expires_at))
    except StoreError as exc:
        log.error("%s: mta-sts policy not saved: %s", domain, exc)
