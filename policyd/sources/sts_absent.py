"""The domains the MTA-STS source (:mod:`policyd.sources.sts`) knows to publish no record.

The common case kept compact: a domain whose last discovery found no record (and nothing
else worth remembering) -> when to look again, one float each. Oldest first (insertion
order: ``recheck_interval`` is one value, so also soonest due first), at most ``limit`` of
them; a forgotten one is only read again, never answered weaker (it has no policy to lose).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from policyd.adapters.dns import DnsAnswer
from policyd.codec.mtasts import StsTxtProblem, TxtProblemKind, discover
from policyd.core.seconds import Seconds
from policyd.sources.dns import DnsQuery
from policyd.sources.sts_state import DomainState

TXT_PREFIX: Final = "_mta-sts."  # RFC 8461 3.1


class AbsentDomains(dict[str, float]):
    __slots__ = ("_until", "limit")

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("max_absent must be at least 1")
        self.limit = limit
        self._until = Seconds(up=True)  # what until() hands out: one float per second

    def holds(self, domain: str, now: float) -> bool:
        """Whether ``domain`` is known to publish no record at ``now``; forgotten when due
        (discover it again)."""
        until = self.get(domain)
        if until is None:
            return False
        if now < until:
            return True
        del self[domain]
        return False

    def add(self, domain: str, until: float) -> None:
        """Remember ``domain`` until ``until``, forgetting the oldest beyond the limit."""
        if len(self) >= self.limit:
            del self[next(iter(self))]
        self[domain] = until

    def remember(self, domain: str, now: float, interval: float) -> None:
        """Remember ``domain`` until ``interval`` after ``now`` (see :meth:`until`)."""
        self.add(domain, self.until(now, interval))

    def expire(self, now: float) -> None:
        """Forget the domains due at ``now``."""
        for domain in list(self):
            if self[domain] > now:
                break  # oldest first: the rest are due later
            del self[domain]

    def until(self, now: float, interval: float) -> float:
        """now + interval, up to the next whole second: one float object for every domain
        found without a record within the same second."""
        return self._until(now + interval)

    def shift(self, step: float) -> None:
        """The wall clock was stepped by ``step`` seconds: move every time with it."""
        for domain in self:
            self[domain] += step
        self._until.forget()


def shift_all(
    log: logging.Logger, step: float, entries: Iterable[DomainState], absent: AbsentDomains
) -> None:
    """The wall clock was stepped by ``step`` seconds (:mod:`policyd.sources.clock_steps`):
    every time the source holds moves with it, so cached policies keep their real age."""
    log.warning("wall clock stepped by %+.0f seconds: cached mta-sts policies keep their age", step)
    for entry in entries:
        entry.shift(step)
    absent.shift(step)


async def nonexistent(resolver: DnsQuery, domain: str) -> bool:
    """A validated NXDOMAIN for the domain itself: nothing exists below it, so neither
    does ``_mta-sts.<domain>`` (RFC 8020 2; the denial is DNSSEC-proven, RFC 4035 5.4),
    and its TXT query is not sent. The MX query is the one the DNS source makes for the
    same destination: the resolver shares it (in flight or cached). A failed or
    unsigned answer proves nothing: the TXT record is then asked for as before."""
    mx = await resolver.query(domain, "MX")
    return mx.nxdomain and mx.secure


async def txt_of_new(resolver: DnsQuery, domain: str) -> DnsAnswer | None:
    """A never-seen domain's TXT answer, for its discovery job; None when the domain does
    not exist or its TXT query completes without a v=STSv1 record (found as the job would
    find them): the caller remembers it as publishing no record, with no job (one task
    and one wait fewer, and no room on the fetch queue needed, which is for policy
    fetches: with the queue full, such a domain is still known to have no policy rather
    than pending). A failed query, a record or a bad one is the job's to read and report."""
    if await nonexistent(resolver, domain):
        return None
    answer = await resolver.query(TXT_PREFIX + domain, "TXT")
    found = None if answer.failed else discover(answer.texts)
    if isinstance(found, StsTxtProblem) and found.kind is TxtProblemKind.NONE:
        return None
    return answer
