"""Gathering: the order of a destination's lookups. The DNS source runs in the lookup's
own task; the MTA-STS source starts alongside the hosts' lookups once the DNS source says
the name takes mail, and after the DNS evidence for a name that takes none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from policyd.core.evidence import Destination, DnsEvidence, DnsStatus, MxKind, StsEvidence
from policyd.gathering import Gathering
from policyd.overrides import Overrides
from tests.fakes import SERVICE_NOW, FakeProbe, FakeSts, MemoryStore, plain_dns, run_ready


class StepDane:
    """A DNS source in two steps, its hosts' lookups held by ``hosts``: says the name
    takes mail after its MX step unless the name is ``gone.test``."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.hosts = asyncio.Event()

    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        self.steps.append("mx")
        if dest.name == "gone.test":
            return DnsEvidence(DnsStatus.SECURE, MxKind.NXDOMAIN)
        if takes_mail is not None:
            takes_mail()
        await self.hosts.wait()
        self.steps.append("hosts")
        return plain_dns(dest.name, now)


class StepSts(FakeSts):
    def __init__(self, steps: list[str]) -> None:
        super().__init__()
        self.steps = steps

    async def evidence(self, domain: str) -> StsEvidence:
        self.steps.append("mta-sts")
        return await super().evidence(domain)


def stepped() -> tuple[list[str], StepDane, Gathering]:
    steps: list[str] = []
    dane = StepDane(steps)
    g = Gathering(dane, StepSts(steps), FakeProbe(), Overrides(MemoryStore()), lambda: SERVICE_NOW)
    return steps, dane, g


async def test_mta_sts_is_asked_alongside_the_hosts_of_a_name_that_takes_mail() -> None:
    steps, dane, g = stepped()
    gathered = asyncio.ensure_future(g.evidence(Destination("example.test")))
    await run_ready()
    assert steps == ["mx", "mta-sts"]  # while the hosts' lookups are under way
    dane.hosts.set()
    ev = await gathered
    assert ev.dns is not None and ev.dns.hosts
    assert steps == ["mx", "mta-sts", "hosts"]


async def test_mta_sts_of_a_name_that_takes_no_mail_is_asked_after_its_dns() -> None:
    steps, _, g = stepped()
    ev = await g.evidence(Destination("gone.test"))
    assert ev.dns is not None and ev.dns.kind is MxKind.NXDOMAIN
    assert steps == ["mx", "mta-sts"]  # still asked (the resolver has the MX answer)
