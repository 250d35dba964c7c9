"""Probes and MTA-STS fetches done once per fleet, through the work-claim seam.

The sources keep their own schedules and caches; these wrappers sit between a source and
its adapter (the prober, the policy fetcher) and hand each unit of network work to a
:class:`~policyd.adapters.claims.WorkClaims`:

* a probe is claimed per remote **address and port** (``probe:[192.0.2.25]:25``), so every
  MX name that points at one address waits its turn across the whole fleet (the review's
  M5); its findings are shared per address, port and MX name, since the certificate is
  judged against the name;
* a policy fetch is claimed and shared per policy domain (``sts:example.com``).

A host that finds another one probing an address for longer than the lease records the
address as not probed this round (``unreachable``: no evidence either way, never counted
against the host) rather than opening a second session. A fetch in that case is done here:
a missing policy would weaken the answer, an extra fetch does not.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from policyd.adapters.claims import ClaimBusy, Job, WorkClaims, WorkKind
from policyd.adapters.https import MAX_POLICY_BYTES, FetchError
from policyd.adapters.smtp_probe import MAX_ADDRESSES_PER_HOST
from policyd.codec.records import probe_state_from_json, probe_state_to_json
from policyd.core.evidence import DnsStatus, MxHost, ProbeHost, ProbeState, ProbeVerdict
from policyd.core.names import fold
from policyd.settings import ProbeSettings
from policyd.sources.probe import Prober
from policyd.sources.sts import PolicyFetcherProtocol

LEASE_MARGIN: Final = 5.0  # seconds a lease outlasts the work's own time bound
# Seconds between the end of one probe session to an address and the start of the next,
# fleet-wide, whatever MX name it is for (the review's M5: names pointing at one address
# cannot make a STARTTLS hammer); no more than host_min_interval when that is smaller.
ADDRESS_SPACING: Final = 1.0
# Seconds another host may reuse a finding or a fetched policy body. Probes: at least one
# poll round for the hosts waiting on it; MTA-STS: short, because a policy published with a
# new id within this window would be served the body fetched just before.
MIN_PROBE_KEEP: Final = 5.0
STS_KEEP: Final = 30.0

log = logging.getLogger("policyd.fleet")


def claimed_prober(
    prober: Prober,
    claims: WorkClaims,
    settings: ProbeSettings,
    clock: Callable[[], float] = time.time,
) -> Prober:
    """A prober that probes each address of an MX host under a claim on that address."""
    lease = settings.total_timeout + LEASE_MARGIN
    keep = max(settings.host_min_interval, MIN_PROBE_KEEP)
    spacing = min(ADDRESS_SPACING, settings.host_min_interval)

    async def probe_one(mx: MxHost, port: int, address: str) -> list[ProbeHost]:
        name = mx.name  # a DomainName (MxHost): already in normal form
        single = replace(mx, addresses=(address,))

        async def work() -> str:
            return probe_state_to_json(
                ProbeState(level=None, hosts=tuple(await prober(single, port)))
            )

        where = f"[{address}]:{port}"
        try:
            text = await claims.once(
                Job(
                    WorkKind.PROBE,
                    where,
                    f"{where}:{name}",
                    work,
                    lease=lease,
                    keep=keep,
                    rest=spacing,
                )
            )
        except ClaimBusy:
            detail = "not probed: another probe of this address is still running"
            return [ProbeHost(name, address, ProbeVerdict.UNREACHABLE, detail, probed_at=clock())]
        try:
            return list(probe_state_from_json(text).hosts)
        except ValueError as exc:  # written by another (newer or broken) fleet member
            log.warning("%s: shared probe findings ignored: %s", where, exc)
            return await prober(single, port)

    async def probe(mx: MxHost, port: int) -> list[ProbeHost]:
        if mx.address is DnsStatus.FAILED or not mx.addresses:
            return await prober(mx, port)  # nothing to connect to: the prober says why
        found: list[ProbeHost] = []
        for address in mx.addresses[:MAX_ADDRESSES_PER_HOST]:
            found.extend(await probe_one(mx, port, address))
        return found

    return probe


class ClaimedFetcher:
    """An MTA-STS policy fetcher whose fetches (and failures) are shared by the fleet."""

    def __init__(
        self, fetcher: PolicyFetcherProtocol, claims: WorkClaims, *, total_timeout: float
    ) -> None:
        self._fetcher = fetcher
        self._claims = claims
        self._lease = total_timeout + LEASE_MARGIN

    async def fetch(self, domain: str) -> bytes:
        name = fold(domain)

        async def work() -> str:
            try:
                body = await self._fetcher.fetch(name)
            except FetchError as exc:
                return json.dumps({"error": exc.reason})
            return json.dumps({"body": base64.b64encode(body).decode("ascii")})

        try:
            text = await self._claims.once(
                Job(WorkKind.STS, name, name, work, lease=self._lease, keep=STS_KEEP)
            )
        except ClaimBusy:
            return await self._fetcher.fetch(name)
        try:
            return _decode(name, text)
        except ValueError as exc:
            log.warning("%s: shared mta-sts fetch ignored: %s", name, exc)
            return await self._fetcher.fetch(name)


def _decode(domain: str, text: str) -> bytes:
    """A shared fetch back into the body, or the FetchError it was; ValueError if foreign."""
    if len(text) > 2 * MAX_POLICY_BYTES:
        raise ValueError("too large")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    error, body = doc.get("error"), doc.get("body")
    if isinstance(error, str):
        raise FetchError(domain, error)
    if not isinstance(body, str):
        raise ValueError("neither body nor error")
    try:
        raw = base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad body: {exc}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ValueError("body too large")
    return raw
