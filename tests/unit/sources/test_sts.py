"""policyd.sources.sts: discovery, fetch and the downgrade-proof cache, with fakes.

Time is a fake clock moved by the tests; the only real waiting is a few loop iterations
and, for the "pending" cases, a cold budget of a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from policyd.adapters.dns import DnsAnswer, Rcode
from policyd.adapters.https import FetchError
from policyd.adapters.store import Kind, Record, StoreError
from policyd.codec.mtasts import MAX_AGE_CAP
from policyd.codec.records import sts_policy_from_json, sts_policy_to_json
from policyd.core.evidence import DnsStatus, StsEvidence, StsMode, StsPolicy
from policyd.settings import StsSettings
from policyd.sources.sts import StsSource
from tests import fakes
from tests.fakes import dns_answer, dns_failure

T0 = 1_700_000_000.0
DOMAIN = "example.com"


def policy_body(mode: str = "enforce", max_age: int = 604800, mx: str = "mx.example.com") -> bytes:
    return f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n".encode()


TXT_NAME = "_mta-sts.example.com"


def txt(policy_id: str) -> DnsAnswer:
    records = ("v=spf1 -all", f"v=STSv1; id={policy_id}")
    return dns_answer(TXT_NAME, "TXT", *records, status=DnsStatus.INSECURE)


NO_TXT = dns_answer(TXT_NAME, "TXT")
DNS_FAILED = dns_failure(TXT_NAME, "TXT", "SERVFAIL")


# -- fakes -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore(fakes.MemoryStore):
    """The shared fake store with a failure switch for writes."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def put(self, record: Record) -> None:
        if self.fail:
            raise StoreError("disk full")
        await super().put(record)


@dataclass
class FakeTxt:
    """The TXT answers of the resolver, by domain (the source asks ``_mta-sts.<domain>``);
    the domain's own MX (asked before a discovery, and to compare with a cached enforce
    policy) is ``mx.<domain>``, as the policies published here list, unless set in ``mx``.
    ``names`` lists the TXT queries, ``mx_names`` the MX ones."""

    answers: dict[str, DnsAnswer] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    mx: dict[str, DnsAnswer] = field(default_factory=dict)
    mx_names: list[str] = field(default_factory=list)

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        if rdtype == "MX":
            self.mx_names.append(name)
            return self.mx.get(name) or dns_answer(name, "MX", f"10 mx.{name}.")
        assert rdtype == "TXT"
        self.names.append(name)
        return self.answers.get(name.removeprefix("_mta-sts."), NO_TXT)

    def set(self, domain: str, result: DnsAnswer) -> None:
        self.answers[domain] = result


@dataclass
class FakeFetcher:
    bodies: dict[str, bytes | Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    hang: set[str] = field(default_factory=set)  # domains whose fetch never ends
    active: int = 0
    most_active: int = 0  # the most fetches in progress at once

    async def fetch(self, domain: str) -> bytes:
        self.calls.append(domain)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if domain in self.hang:
                await asyncio.Event().wait()
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.active -= 1
        body = self.bodies.get(domain, FetchError(domain, "HTTP 404"))
        if isinstance(body, Exception):
            raise body
        return body


@dataclass
class World:
    clock: Clock
    store: MemoryStore
    txt: FakeTxt
    fetcher: FakeFetcher
    source: StsSource
    changes: list[str | None]

    def restart(self, settings: StsSettings | None = None) -> StsSource:
        self.source = make_source(self, settings)
        return self.source


def make_source(
    w: World, settings: StsSettings | None = None, elapsed: Callable[[], float] | None = None
) -> StsSource:
    """A source on the world's fakes; ``elapsed`` to find steps of its clock."""
    source = StsSource(
        w.store,
        w.txt,
        w.fetcher,
        settings or StsSettings(),
        clock=w.clock,
        elapsed=elapsed,
        log=logging.getLogger("test.sts"),
    )
    source.on_change = w.changes.append
    return source


@pytest.fixture
def w() -> World:
    world = World(Clock(), MemoryStore(), FakeTxt(), FakeFetcher(), None, [])  # type: ignore[arg-type]
    world.restart()
    return world


def publish(w: World, policy_id: str = "id1", body: bytes | None = None) -> None:
    w.txt.set(DOMAIN, txt(policy_id))
    w.fetcher.bodies[DOMAIN] = policy_body() if body is None else body


async def tick() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- cold lookups ------------------------------------------------------------------------


async def test_cold_fetch_within_budget(w: World, caplog: pytest.LogCaptureFixture) -> None:
    publish(w)
    caplog.set_level(logging.INFO, "test.sts")
    ev = await w.source.evidence(DOMAIN)
    assert not ev.pending and ev.error == ""
    assert ev.policy == StsPolicy(StsMode.ENFORCE, ("mx.example.com",), 604800, "id1", T0)
    assert w.txt.names == ["_mta-sts.example.com"]
    rec = w.store.records[(Kind.STS, DOMAIN)]
    assert rec.expires_at == T0 + 604800
    assert sts_policy_from_json(rec.value) == ev.policy
    assert w.changes == [DOMAIN]
    assert (
        "example.com: mta-sts policy id=id1 mode=enforce mx=mx.example.com max_age=604800"
        in caplog.messages
    )
    assert w.source.cached("EXAMPLE.com.", T0) == ev


async def test_no_policy_published(w: World) -> None:
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and not ev.pending and ev.error == ""
    assert w.fetcher.calls == []
    # Negative caching: no new TXT lookup before recheck_interval.
    w.clock.advance(StsSettings().recheck_interval - 1)
    await w.source.evidence(DOMAIN)
    assert len(w.txt.names) == 1
    w.clock.advance(1)
    publish(w)
    assert (await w.source.evidence(DOMAIN)).policy is not None
    assert len(w.txt.names) == 2


async def test_validated_nxdomain_skips_the_txt_query(w: World) -> None:
    # RFC 8020: nothing exists below a name proven not to exist, _mta-sts included.
    w.txt.mx[DOMAIN] = dns_answer(DOMAIN, "MX", rcode=Rcode.NXDOMAIN)
    ev = await w.source.evidence(DOMAIN)
    assert ev == StsEvidence()
    assert w.txt.mx_names == [DOMAIN] and w.txt.names == []
    # Remembered as absent, as a TXT NXDOMAIN would be: nothing asked before the recheck.
    w.clock.advance(StsSettings().recheck_interval - 1)
    assert await w.source.evidence(DOMAIN) == StsEvidence()
    assert w.txt.mx_names == [DOMAIN] and w.txt.names == []


async def test_first_discovery_asks_mx_once(w: World) -> None:
    # The lookup's MX check before queueing the discovery is the job's too.
    publish(w)
    assert (await w.source.evidence(DOMAIN)).policy is not None
    assert w.txt.mx_names == [DOMAIN] and w.txt.names == [TXT_NAME]


@pytest.mark.parametrize(
    "mx",
    [
        dns_answer(DOMAIN, "MX", rcode=Rcode.NXDOMAIN, status=DnsStatus.INSECURE),
        dns_failure(DOMAIN, "MX", "SERVFAIL"),
        dns_failure(DOMAIN, "MX", "timeout"),
    ],
    ids=["unsigned-nxdomain", "servfail", "timeout"],
)
async def test_unproven_absence_still_asks_txt(w: World, mx: DnsAnswer) -> None:
    # A failed MX lookup is never taken for absence, nor is an unsigned denial.
    w.txt.mx[DOMAIN] = mx
    publish(w)
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.policy_id == "id1"
    assert w.txt.names == [TXT_NAME]


async def test_cached_policy_refresh_does_not_ask_mx(w: World) -> None:
    publish(w, "id1")
    assert (await w.source.evidence(DOMAIN)).policy is not None
    w.txt.mx_names.clear()
    w.txt.mx[DOMAIN] = dns_answer(DOMAIN, "MX", rcode=Rcode.NXDOMAIN)
    w.clock.advance(StsSettings().recheck_interval)
    publish(w, "id2")
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert w.txt.mx_names == [] and w.txt.names == [TXT_NAME, TXT_NAME]
    assert (await w.source.evidence(DOMAIN)).policy is not None


async def test_domains_without_record_kept_compact_and_bounded(w: World) -> None:
    source = StsSource(
        w.store,
        w.txt,
        w.fetcher,
        StsSettings(),
        clock=w.clock,
        log=logging.getLogger("test.sts"),
        max_absent=2,
    )
    for name in ("a.example", "b.example", "c.example"):
        assert await source.evidence(name) == StsEvidence()
    # One float each, not an entry; the oldest forgotten beyond max_absent.
    assert source._domains == {}
    assert list(source._absent) == ["b.example", "c.example"]
    assert len(w.txt.names) == 3
    await source.evidence("c.example")  # remembered: not read again
    assert len(w.txt.names) == 3
    await source.evidence("a.example")  # forgotten: read again, never answered weaker
    assert len(w.txt.names) == 4
    w.clock.advance(StsSettings().recheck_interval + 1)
    await source.refresh_due()
    assert source._absent == {}
    source.forget(None)


async def test_slow_cold_fetch_pending_then_stored(w: World) -> None:
    publish(w)
    w.fetcher.gate = asyncio.Event()
    w.restart(StsSettings(cold_budget=0.01))
    ev = await w.source.evidence(DOMAIN)
    assert ev.pending and ev.policy is None
    assert w.source.cached(DOMAIN, T0).pending
    assert w.changes == []
    w.fetcher.gate.set()
    await w.source.wait_idle()
    done = w.source.cached(DOMAIN, T0)
    assert not done.pending and done.policy is not None and done.policy.policy_id == "id1"
    assert (Kind.STS, DOMAIN) in w.store.records
    assert w.changes == [DOMAIN]  # the service drops the answer it built while pending


async def test_concurrent_lookups_share_one_fetch(w: World) -> None:
    publish(w)
    w.fetcher.gate = asyncio.Event()
    lookups = [asyncio.create_task(w.source.evidence(DOMAIN)) for _ in range(5)]
    await tick()
    assert w.fetcher.calls == [DOMAIN]
    w.fetcher.gate.set()
    results = await asyncio.gather(*lookups)
    assert {r.policy.policy_id for r in results if r.policy} == {"id1"}
    assert all(r.policy is not None for r in results)
    assert len(w.txt.names) == 1 and w.fetcher.calls == [DOMAIN]


async def test_pending_lookup_joins_running_fetch(w: World) -> None:
    publish(w)
    w.fetcher.gate = asyncio.Event()
    w.restart(StsSettings(cold_budget=0.01))
    assert (await w.source.evidence(DOMAIN)).pending
    assert (await w.source.evidence(DOMAIN)).pending
    assert len(w.fetcher.calls) == 1
    w.fetcher.gate.set()
    await w.source.wait_idle()


async def test_concurrent_fetches_bounded(w: World) -> None:
    w.fetcher.gate = asyncio.Event()
    domains = [f"d{i}.example" for i in range(6)]
    for d in domains:
        w.txt.set(d, txt("a"))
        w.fetcher.bodies[d] = policy_body()
    w.restart(StsSettings(cold_budget=0.01, max_concurrent_fetches=2))
    results = await asyncio.gather(*(w.source.evidence(d) for d in domains))
    assert all(r.pending for r in results)
    assert w.fetcher.most_active == 2
    w.fetcher.gate.set()
    await w.source.wait_idle()
    # Slow discoveries nobody waits for any more may be stopped for waited ones and run
    # again: every domain is fetched, never more than two at once.
    assert set(w.fetcher.calls) == set(domains)
    assert w.fetcher.most_active == 2
    assert all(w.source.cached(d, T0).policy is not None for d in domains)


# -- the fetch queue: first contact is not a downgrade window -----------------------------


def mta_sts_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("mta-sts "))


async def settle() -> None:
    """Enough loop turns for queued work to be started, stopped or finished."""
    for _ in range(30):
        await asyncio.sleep(0)


async def flood(w: World, count: int, first: int = 0) -> list[str]:
    """``count`` attacker domains whose TXT answers and whose policy host never finishes
    the fetch, each looked up once (every lookup gives up after cold_budget)."""
    slow = [f"r{i}.attacker.example" for i in range(first, first + count)]
    for d in slow:
        w.txt.set(d, txt("a"))
        w.fetcher.hang.add(d)
    results = await asyncio.gather(*(w.source.evidence(d) for d in slow))
    assert all(r.pending and r.policy is None for r in results)
    return slow


async def test_real_domain_cached_on_first_lookup_despite_400_slow_domains(w: World) -> None:
    """Security review H3: with 400 slow domains queued (16 fetching, 384 waiting), the
    first lookup of a real MTA-STS domain still gets its policy within cold_budget plus
    its own fetch time: discoveries nobody waits for make way for one a lookup waits for."""
    budget = 0.2
    w.restart(StsSettings(cold_budget=budget, max_concurrent_fetches=16))
    await flood(w, 400)
    stats = w.source.queue_stats()
    assert (stats.running, stats.queued, stats.dropped) == (16, 384, 0)
    assert w.fetcher.most_active == 16 and mta_sts_tasks() == 16
    publish(w)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ev = await w.source.evidence(DOMAIN)
    elapsed = loop.time() - t0
    assert ev.policy is not None and ev.policy.policy_id == "id1", ev
    assert not ev.pending
    assert elapsed < budget
    assert w.fetcher.most_active == 16  # one slow fetch was stopped to make room
    assert w.source.queue_stats().preempted == 1
    assert mta_sts_tasks() <= 16
    w.source.forget(None)
    await tick()
    assert mta_sts_tasks() == 0


async def test_refresh_of_cached_policy_goes_first(w: World) -> None:
    """A due refresh of a cached policy starts ahead of 100 queued discoveries."""
    publish(w)
    assert (await w.source.evidence(DOMAIN)).policy is not None
    w.restart(StsSettings(cold_budget=0.01, max_concurrent_fetches=4))
    await w.source.load()
    await flood(w, 100)
    w.fetcher.calls.clear()
    w.clock.advance(StsSettings().refresh_interval + 1)
    w.txt.set(DOMAIN, txt("id2"))
    assert await w.source.refresh_due() == 1
    await settle()
    assert w.fetcher.calls[0] == DOMAIN  # then a background discovery takes the slot
    refreshed = w.source.cached(DOMAIN, w.clock.now).policy
    assert refreshed is not None and refreshed.policy_id == "id2"
    w.source.forget(None)


async def test_queue_bounded_refuses_and_says_so(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    w.restart(StsSettings(cold_budget=0.01, max_concurrent_fetches=2, max_queued_fetches=10))
    slow = await flood(w, 12)  # 2 fetching, 10 waiting
    assert w.source.queue_stats().queued == 10
    publish(w)
    # A new discovery a lookup waits for drops the oldest background one.
    assert (await w.source.evidence(DOMAIN)).policy is not None
    stats = w.source.queue_stats()
    assert stats.dropped == 1 and stats.queued <= 10
    dropped = [w.source.cached(d, w.clock.now) for d in slow]
    dropped = [e for e in dropped if e.error]
    assert len(dropped) == 1 and dropped[0].pending
    assert dropped[0].error == "not fetched: dropped for more urgent fetches"
    assert any("mta-sts not fetched" in m for m in caplog.messages)
    w.source.forget(None)


async def fill_queue_with_waited_work(
    w: World,
) -> tuple[asyncio.Event, list[asyncio.Task[StsEvidence]]]:
    """One discovery running and two queued, each a lookup waiting on it; the fetches end
    when the returned gate is set."""
    w.restart(StsSettings(cold_budget=5.0, max_concurrent_fetches=1, max_queued_fetches=2))
    gate = w.fetcher.gate = asyncio.Event()
    names = ["a.example", "b.example", "c.example"]
    for d in names:
        w.txt.set(d, txt("a"))
        w.fetcher.bodies[d] = policy_body()
    waiting = [asyncio.create_task(w.source.evidence(d)) for d in names]
    await settle()
    assert w.source.queue_stats().queued == 2
    return gate, waiting


async def test_queue_full_of_urgent_work_refuses(w: World) -> None:
    """With only waited-for work queued, a new discovery is refused at once: the lookup
    answers at once, the policy still unknown (pending: strict profiles defer, answers
    live only seconds), and the next lookup asks again."""
    gate, waiting = await fill_queue_with_waited_work(w)
    publish(w)
    refused = await w.source.evidence(DOMAIN)
    assert refused.pending and refused.policy is None  # not known yet
    assert refused.error == "not fetched: 2 fetches already queued"
    assert w.source.queue_stats().dropped == 1
    gate.set()
    assert all(r.policy is not None for r in await asyncio.gather(*waiting))
    assert (await w.source.evidence(DOMAIN)).policy is not None  # asked again


async def test_nonexistent_domain_needs_no_queue_room(w: World) -> None:
    """A never-seen domain proven not to exist is known without a discovery job: with
    the queue full it is still answered as publishing no record, not as pending (which
    strict profiles defer), and nothing is refused for it."""
    gate, waiting = await fill_queue_with_waited_work(w)
    w.txt.mx[DOMAIN] = dns_answer(DOMAIN, "MX", rcode=Rcode.NXDOMAIN)
    assert await w.source.evidence(DOMAIN) == StsEvidence()
    assert w.source.queue_stats().dropped == 0 and w.txt.names.count(TXT_NAME) == 0
    assert await w.source.evidence(DOMAIN) == StsEvidence()  # remembered: MX not asked again
    assert w.txt.mx_names.count(DOMAIN) == 1
    gate.set()
    await asyncio.gather(*waiting)


async def test_domain_without_record_needs_no_queue_room(w: World) -> None:
    """A never-seen domain whose TXT query completes without a v=STSv1 record is known
    without a discovery job: with the queue full it is answered as publishing no record,
    not as pending, and the TXT record is not read again before recheck_interval."""
    gate, waiting = await fill_queue_with_waited_work(w)
    w.txt.set(DOMAIN, dns_answer(TXT_NAME, "TXT", "v=spf1 -all"))  # not an MTA-STS record
    assert await w.source.evidence(DOMAIN) == StsEvidence()
    assert await w.source.evidence(DOMAIN) == StsEvidence()
    assert w.source.queue_stats().dropped == 0 and w.txt.names.count(TXT_NAME) == 1
    gate.set()
    await asyncio.gather(*waiting)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (DNS_FAILED, "TXT lookup failed: SERVFAIL"),
        (dns_answer(TXT_NAME, "TXT", "v=STSv1; id="), "invalid v=STSv1 TXT record"),
    ],
    ids=["failed", "bad-record"],
)
async def test_a_new_domain_s_txt_answer_goes_to_its_job_once(
    w: World, answer: DnsAnswer, error: str
) -> None:
    """A failed TXT query or a bad record is not taken for absence: the discovery job
    reads the answer the lookup got (not a second query) and reports it."""
    w.txt.set(DOMAIN, answer)
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and error in ev.error
    assert w.txt.names.count(TXT_NAME) == 1


async def test_cold_budget_counts_the_mx_wait(w: World) -> None:
    """A never-seen domain's MX answer is awaited before its discovery is queued; the
    lookup still waits at most cold_budget in all (generous margins: real timers)."""
    w.restart(StsSettings(cold_budget=0.4))
    publish(w)
    w.fetcher.hang.add(DOMAIN)
    plain = w.txt.query

    async def slow_mx(name: str, rdtype: str) -> DnsAnswer:
        if rdtype == "MX":
            await asyncio.sleep(0.3)
        return await plain(name, rdtype)

    w.txt.query = slow_mx  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    ev = await w.source.evidence(DOMAIN)
    assert ev.pending and ev.policy is None
    assert 0.35 <= loop.time() - started < 0.6  # not 0.3 + 0.4
    w.source.forget(None)


async def test_preempted_discovery_runs_again(w: World) -> None:
    """A slow discovery stopped for urgent work is queued again, and finishes later."""
    w.restart(StsSettings(cold_budget=0.01, max_concurrent_fetches=1))
    w.txt.set("slow.example", txt("s"))
    w.fetcher.bodies["slow.example"] = policy_body()
    w.fetcher.gate = asyncio.Event()
    assert (await w.source.evidence("slow.example")).pending
    publish(w)
    lookup = asyncio.create_task(w.source.evidence(DOMAIN))
    await settle()
    assert w.fetcher.calls == ["slow.example", DOMAIN]
    w.fetcher.gate.set()
    assert (await lookup).policy is not None
    await w.source.wait_idle()
    assert w.fetcher.calls == ["slow.example", DOMAIN, "slow.example"]
    assert w.source.cached("slow.example", w.clock.now).policy is not None


# -- failures keep the cached policy -----------------------------------------------------


async def cached_then_stale(w: World) -> StsPolicy:
    """A policy cached at T0, then the clock moved past refresh_interval."""
    publish(w)
    first = (await w.source.evidence(DOMAIN)).policy
    assert first is not None
    w.clock.advance(StsSettings().refresh_interval + 1)
    return first


@pytest.mark.parametrize(
    ("txt_result", "body", "error"),
    [
        (DNS_FAILED, None, "TXT lookup failed: SERVFAIL"),
        (txt("id1"), FetchError(DOMAIN, "HTTP 503"), "policy fetch failed: HTTP 503"),
        (txt("id2"), FetchError(DOMAIN, "timeout"), "policy fetch failed: timeout"),
        (txt("id2"), b"<html>hi</html>", "invalid policy: line: line 1 is not 'key: value'"),
        (txt("id2"), policy_body(mx="*.*.bad"), "invalid policy: mx: invalid mx pattern '*.*.bad'"),
        (NO_TXT, None, ""),
        (
            dns_answer(TXT_NAME, "TXT", "v=STSv1; id=1", "v=STSv1; id=2"),
            None,
            "2 v=STSv1 TXT records (must be one)",
        ),
        (dns_answer(TXT_NAME, "TXT", "v=STSv1; id="), None, "invalid v=STSv1 TXT record"),
    ],
)
async def test_cached_policy_survives(
    w: World, txt_result: DnsAnswer, body: bytes | Exception | None, error: str
) -> None:
    first = await cached_then_stale(w)
    w.txt.set(DOMAIN, txt_result)
    if body is not None:
        w.fetcher.bodies[DOMAIN] = body
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy == first  # answered at once from the cache
    await w.source.wait_idle()
    after = w.source.cached(DOMAIN, w.clock.now)
    assert after.policy == first
    assert after.error.startswith(error)
    assert (Kind.STS, DOMAIN) in w.store.records
    # It still expires at its own max_age.
    assert w.source.cached(DOMAIN, first.expires_at).policy is None


async def test_retry_not_before_five_minutes(w: World) -> None:
    w.txt.set(DOMAIN, txt("id1"))  # the fetch fails: HTTP 404
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and ev.error == "policy fetch failed: HTTP 404"
    w.clock.advance(299)
    assert (await w.source.evidence(DOMAIN)).error == "policy fetch failed: HTTP 404"
    assert len(w.fetcher.calls) == 1 and len(w.txt.names) == 1
    w.clock.advance(1)
    w.fetcher.bodies[DOMAIN] = policy_body()
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.error == ""
    assert len(w.fetcher.calls) == 2


async def test_retry_after_failure_for_cached_policy(w: World) -> None:
    await cached_then_stale(w)
    w.txt.set(DOMAIN, DNS_FAILED)
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    names = len(w.txt.names)
    w.clock.advance(299)
    await w.source.evidence(DOMAIN)
    await w.source.refresh_due()
    await w.source.wait_idle()
    assert len(w.txt.names) == names
    w.clock.advance(1)
    w.txt.set(DOMAIN, txt("id1"))
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert len(w.txt.names) == names + 1
    refreshed = w.source.cached(DOMAIN, w.clock.now)
    assert refreshed.error == "" and refreshed.policy is not None
    assert refreshed.policy.fetched_at == w.clock.now


async def test_vanished_txt_does_not_refetch_each_lookup(w: World) -> None:
    await cached_then_stale(w)
    w.txt.set(DOMAIN, NO_TXT)
    for _ in range(3):
        await w.source.evidence(DOMAIN)
        await w.source.wait_idle()
    assert len(w.txt.names) == 2 and len(w.fetcher.calls) == 1


# -- ids, refreshes, modes ---------------------------------------------------------------


async def test_id_change_refetches(w: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.sts")
    publish(w)
    await w.source.evidence(DOMAIN)
    w.clock.advance(StsSettings().recheck_interval)
    publish(w, "id2", policy_body(mx="*.example.net", max_age=86400))
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.policy_id == "id1"  # old one, at once
    await w.source.wait_idle()
    new = w.source.cached(DOMAIN, w.clock.now).policy
    assert new is not None and (new.policy_id, new.mx) == ("id2", ("*.example.net",))
    assert sts_policy_from_json(w.store.records[(Kind.STS, DOMAIN)].value) == new
    assert w.changes == [DOMAIN, DOMAIN]
    assert (
        "example.com: mta-sts policy id=id2 mode=enforce mx=*.example.net max_age=86400"
        in caplog.messages
    )


async def test_same_id_no_refetch(w: World) -> None:
    publish(w)
    await w.source.evidence(DOMAIN)
    w.clock.advance(StsSettings().recheck_interval - 1)
    await w.source.evidence(DOMAIN)
    assert len(w.txt.names) == 1  # not even a TXT check yet
    w.clock.advance(1)
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert len(w.txt.names) == 2 and len(w.fetcher.calls) == 1
    assert w.changes == [DOMAIN]


async def test_same_id_refetched_after_refresh_interval(w: World) -> None:
    publish(w)
    await w.source.evidence(DOMAIN)
    w.clock.advance(StsSettings().refresh_interval)
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert len(w.fetcher.calls) == 2
    pol = w.source.cached(DOMAIN, w.clock.now).policy
    assert pol is not None and pol.fetched_at == w.clock.now
    assert w.changes == [DOMAIN]  # same content: no change to report


async def test_mode_none_removes(w: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.sts")
    publish(w)
    await w.source.evidence(DOMAIN)
    w.clock.advance(StsSettings().recheck_interval)
    publish(w, "id2", b"version: STSv1\nmode: none\nmax_age: 86400\n")
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    assert w.source.cached(DOMAIN, w.clock.now).policy is None
    assert (Kind.STS, DOMAIN) not in w.store.records
    assert w.changes == [DOMAIN, DOMAIN]
    assert any("mode=none" in m and "removed" in m for m in caplog.messages)
    # The none policy is remembered: no refetch of the same id on the next lookups.
    w.clock.advance(StsSettings().recheck_interval)
    assert (await w.source.evidence(DOMAIN)).policy is None
    assert len(w.fetcher.calls) == 2


async def test_mode_none_cold_is_no_policy(w: World) -> None:
    publish(w, body=b"version: STSv1\nmode: none\nmax_age: 86400\n")
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and not ev.pending and ev.error == ""
    assert w.store.records == {}


async def test_testing_mode_cached_as_testing(w: World) -> None:
    publish(w, body=policy_body(mode="testing"))
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.mode is StsMode.TESTING
    assert sts_policy_from_json(w.store.records[(Kind.STS, DOMAIN)].value).mode is StsMode.TESTING


async def test_max_age_expiry(w: World) -> None:
    publish(w, body=policy_body(max_age=600))
    first = (await w.source.evidence(DOMAIN)).policy
    assert first is not None and first.expires_at == T0 + 600
    assert w.source.cached(DOMAIN, T0 + 599).policy == first
    assert w.source.cached(DOMAIN, T0 + 600).policy is None
    # Once expired, the next lookup is a cold one again, and a dead server means no policy.
    w.clock.advance(600)
    w.fetcher.bodies[DOMAIN] = FetchError(DOMAIN, "timeout")
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and ev.error == "policy fetch failed: timeout"


async def test_short_policy_refreshed_before_expiry(w: World) -> None:
    publish(w, body=policy_body(max_age=600))
    await w.source.evidence(DOMAIN)
    w.clock.advance(299)
    assert await w.source.refresh_due() == 0
    w.clock.advance(1)  # half its max_age
    assert await w.source.refresh_due() == 1
    await w.source.wait_idle()
    pol = w.source.cached(DOMAIN, w.clock.now).policy
    assert pol is not None and pol.fetched_at == T0 + 300


async def test_max_age_capped_and_logged(w: World, caplog: pytest.LogCaptureFixture) -> None:
    publish(w, body=policy_body(max_age=99_999_999))
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.max_age == MAX_AGE_CAP
    assert f"example.com: mta-sts max_age 99999999 capped to {MAX_AGE_CAP}" in caplog.messages


async def test_ip_literal_mx_dropped_and_logged(w: World, caplog: pytest.LogCaptureFixture) -> None:
    body = b"version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: 192.0.2.25\nmax_age: 86400\n"
    publish(w, body=body)
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None and ev.policy.mx == ("mx.example.com",)
    assert "example.com: mta-sts mx patterns that are IP addresses ignored: 192.0.2.25" in (
        caplog.messages
    )


async def test_oversized_policy_refused_cached_one_kept(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A refreshed policy with too many patterns is an invalid policy: the cached one
    stays until its max_age, and the log line stays short."""
    first = await cached_then_stale(w)
    many = "".join(f"mx: m{i}.example.com\n" for i in range(3000))
    w.fetcher.bodies[DOMAIN] = f"version: STSv1\nmode: enforce\n{many}max_age: 1\n".encode()
    w.txt.set(DOMAIN, txt("id2"))
    await w.source.evidence(DOMAIN)
    await w.source.wait_idle()
    ev = w.source.cached(DOMAIN, w.clock.now)
    assert ev.policy == first
    assert "3000 mx patterns, more than the 64 accepted" in ev.error
    assert max(len(m) for m in caplog.messages) < 300


# -- persistence, housekeeping, flush ----------------------------------------------------


async def test_load_after_restart(w: World) -> None:
    publish(w)
    first = (await w.source.evidence(DOMAIN)).policy
    w.store.records[(Kind.STS, "old.example")] = Record(
        Kind.STS,
        "old.example",
        sts_policy_to_json(StsPolicy(StsMode.ENFORCE, ("mx.old.example",), 10, "x", T0 - 100)),
        T0 - 90,
    )
    w.store.records[(Kind.STS, "junk.example")] = Record(Kind.STS, "junk.example", "{", None)
    w.txt.set(DOMAIN, DNS_FAILED)  # the attacker blocks DNS after the restart
    w.fetcher.bodies[DOMAIN] = FetchError(DOMAIN, "timeout")
    w.clock.advance(3600)
    source = w.restart()
    await source.load()
    assert source.cached(DOMAIN, w.clock.now).policy == first
    assert source.cached("old.example", w.clock.now).policy is None
    assert source.cached("junk.example", w.clock.now).policy is None
    names = len(w.txt.names)
    ev = await source.evidence(DOMAIN)
    assert ev.policy == first
    await source.wait_idle()  # a TXT check was started (id never checked since restart)
    assert len(w.txt.names) == names + 1
    assert source.cached(DOMAIN, w.clock.now).policy == first


async def test_refresh_due(w: World) -> None:
    for name in ("a.example", "b.example"):
        w.txt.set(name, txt("1"))
        w.fetcher.bodies[name] = policy_body()
    await w.source.evidence("a.example")
    w.clock.advance(43200)
    await w.source.evidence("b.example")
    await w.source.evidence("nothing.example")  # no policy: negative entry
    w.clock.advance(43200)
    assert await w.source.refresh_due() == 1  # only a.example is a day old
    await w.source.wait_idle()
    assert w.fetcher.calls.count("a.example") == 2
    assert w.fetcher.calls.count("b.example") == 1
    assert await w.source.refresh_due() == 0


async def test_forget(w: World) -> None:
    publish(w)
    await w.source.evidence(DOMAIN)
    w.source.forget("Example.COM")
    assert w.source.cached(DOMAIN, w.clock.now).policy is None
    w.fetcher.gate = asyncio.Event()
    w.restart(StsSettings(cold_budget=0.01))
    assert (await w.source.evidence(DOMAIN)).pending
    w.source.forget(None)
    await tick()
    assert w.source.cached(DOMAIN, w.clock.now) == w.source.cached("unknown.example", T0)


async def test_store_failure_keeps_policy_in_memory(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    publish(w)
    w.store.fail = True
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is not None
    assert "example.com: mta-sts policy not saved: disk full" in caplog.messages


async def test_unexpected_error_is_logged_not_raised(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    w.txt.set(DOMAIN, txt("1"))
    w.fetcher.bodies[DOMAIN] = RuntimeError("bug")
    ev = await w.source.evidence(DOMAIN)
    assert ev.policy is None and not ev.pending
    assert ev.error == "internal error: RuntimeError"
    assert any("refresh crashed" in m for m in caplog.messages)
    await w.source.evidence(DOMAIN)  # held off like after any failure
    assert len(w.fetcher.calls) == 1


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="max_concurrent_fetches"):
        StsSettings(max_concurrent_fetches=0)
    with pytest.raises(ValueError, match="max_queued_fetches"):
        StsSettings(max_queued_fetches=0)
    with pytest.raises(ValueError, match="cold_budget"):
        StsSettings(cold_budget=-1)
