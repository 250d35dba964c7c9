"""Evidence for one destination: DNS (DANE), MTA-STS and the probe, gathered together.

One gathering per destination is in flight however many lookups wait for it (shared through
:meth:`~policyd.singleflight.SingleFlight.run_here`: the first lookup gathers in its own
task, the others wait on it; if that lookup times out, a task takes the gathering up again,
for the others and so that it completes, its DNS answers shared or cached by the resolver).
The sources are seams, typed here by what the service needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from policyd.core.evidence import Destination, DnsEvidence, Evidence, ProbeState, StsEvidence
from policyd.overrides import Overrides
from policyd.singleflight import SingleFlight


class DaneSourceLike(Protocol):
    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        """``takes_mail``: called once the destination is known to have hosts to deliver to
        (or its MX lookup failed), before their lookups; not for a name that takes no mail
        (NXDOMAIN, null MX)."""
        ...


class StsSourceLike(Protocol):
    def cached(self, domain: str, now: float) -> StsEvidence: ...

    async def evidence(self, domain: str) -> StsEvidence: ...

    def forget(self, domain: str | None) -> None: ...


class ProbeSourceLike(Protocol):
    def cached(self, key: str) -> ProbeState | None: ...

    def want(self, dest: Destination, dns: DnsEvidence) -> bool: ...

    def forget(self, key: str | None) -> None: ...


class Gathering:
    __slots__ = (
        "_clock",
        "_dane",
        "_flights",
        "_fresh_dane",
        "_fresh_flights",
        "_overrides",
        "_probe",
        "_sts",
    )

    def __init__(
        self,
        dane: DaneSourceLike,
        sts: StsSourceLike,
        probe: ProbeSourceLike,
        overrides: Overrides,
        clock: Callable[[], float],
        *,
        fresh_dane: DaneSourceLike | None = None,
    ) -> None:
        self._dane = dane
        self._sts = sts
        self._probe = probe
        self._overrides = overrides
        self._clock = clock
        self._flights: SingleFlight[str, Evidence] = SingleFlight()
        # A refresh (prefetch) gathers DNS evidence that is not from the DNS cache, through
        # its own source, sharing only gatherings that are as fresh.
        self._fresh_dane = fresh_dane or dane
        self._fresh_flights: SingleFlight[str, Evidence] = SingleFlight()

    async def evidence(self, dest: Destination, *, fresh: bool = False) -> Evidence:
        """The evidence for ``dest``, from the gathering in flight if there is one;
        ``fresh``: for a refresh, its DNS asked again rather than read from the cache."""
        if fresh:
            dane = self._fresh_dane
            return await self._fresh_flights.run_here(dest.key, lambda: self._gather(dest, dane))
        return await self._flights.run_here(dest.key, lambda: self._gather(dest, self._dane))

    async def _gather(self, dest: Destination, dane: DaneSourceLike) -> Evidence:
        now = self._clock()
        override = self._overrides.active(dest.key, now)
        if dest.parent_form or dest.is_address:
            return Evidence(dest, override=override)
        # [host] too: a smart host (profiles' sts_smart_host).
        sts_wanted = dest.port == 25
        # For a known domain the STS source answers from memory at once and refreshes in
        # the background; a cold one is fetched within the source's budget, its TXT query
        # asked after the MX one (a name that does not exist has no policy, RFC 8020).
        # So the DNS source runs here and the STS source in a task started once the DNS
        # source knows the name takes mail, alongside the hosts' lookups; for a name that
        # takes none (half of a flood of never-seen names) there is no task: the STS
        # source answers afterwards, from the MX answer the resolver has just cached.
        sts_task: asyncio.Future[StsEvidence] | None = None

        def takes_mail() -> None:
            nonlocal sts_task
            if sts_task is None:
                sts_task = asyncio.ensure_future(self._sts.evidence(dest.name))

        try:
            dns = await dane.gather(dest, now, takes_mail if sts_wanted else None)
        except BaseException:
            if sts_task is not None:
                sts_task.cancel()  # not left running unowned, its failure never retrieved
            raise
        if sts_task is not None:
            sts_ev = await sts_task
        elif sts_wanted:
            sts_ev = await self._sts.evidence(dest.name)
        else:
            sts_ev = StsEvidence()
        if dns.hosts:
            self._probe.want(dest, dns)
        return Evidence(
            dest,
            override=override,
            dns=dns,
            sts=sts_ev,
            probe=self._probe.cached(dest.key),
        )
