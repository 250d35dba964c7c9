"""The fleet pieces that need no Redis: change messages, local claims, the claimed prober
and fetcher, the publishing store, and applying changes to the service."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.adapters.claims import ClaimBusy, Job, LocalClaims, Work, WorkKind
from policyd.adapters.https import FetchError
from policyd.adapters.store import Kind, Record, StoreError
from policyd.adapters.store_published import PublishingStore
from policyd.cli.policyctl_render import status as render_status
from policyd.codec.control.results import CacheCounts, FleetCounts, LookupCounts, StatusResult
from policyd.codec.fleet import Change, ChangeKind, change_from_json, change_to_json
from policyd.codec.postfix_policy import parse
from policyd.core.evidence import (
    DnsStatus,
    MxHost,
    Override,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server.fleet_sync import FleetSync
from policyd.server.reply_cache import ReplyCache
from policyd.service import PolicyService
from policyd.settings import ProbeSettings
from policyd.sources.fleet_work import ClaimedFetcher, claimed_prober
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, RecordingClaims, reply
from tests.unit.test_service import make

# -- change messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        Change(ChangeKind.OVERRIDE, "example.com", "mx1[42]"),
        Change(ChangeKind.FLUSH, None),
        Change(ChangeKind.FLUSH, "[192.0.2.1]"),
        Change(ChangeKind.FLUSH, None, "h", mta_sts=False),
    ],
)
def test_change_round_trip(change: Change) -> None:
    assert change_from_json(change_to_json(change)) == change


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"v":2,"kind":"flush","key":null}',
        '{"v":1,"kind":"override","key":null}',  # an override needs its key
        '{"v":1,"kind":"delete-everything","key":"x"}',
        '{"v":1,"kind":"flush","key":7}',
        '{"v":1,"kind":"flush","key":""}',
        '{"v":1,"kind":"flush","key":null,"origin":[]}',
        '{"v":1,"kind":"flush","key":null,"mta_sts":"yes"}',
        '{"v":1,"kind":"flush","key":"' + "a" * 3000 + '"}',
    ],
)
def test_foreign_change_messages_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        change_from_json(text)


_FIELD = st.one_of(
    st.none(), st.integers(), st.text(max_size=20), st.sampled_from(["flush", "override", 1])
)
_MESSAGE = st.dictionaries(st.sampled_from(["v", "kind", "key", "origin"]), _FIELD)


@given(st.one_of(st.text(max_size=300), st.builds(json.dumps, _MESSAGE)))
def test_only_value_error_escapes_the_change_decoder(text: str) -> None:
    with contextlib.suppress(ValueError):
        change_from_json(text)


# -- local claims ---------------------------------------------------------------------------


async def test_local_claims_run_one_piece_of_work_per_claim_at_a_time() -> None:
    claims = LocalClaims()
    running = peak = 0

    def work(text: str) -> Work:
        async def run() -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return text

        return run

    got = await asyncio.gather(
        *(
            claims.once(
                Job(WorkKind.PROBE, "[192.0.2.1]:25", str(i), work(str(i)), lease=5, keep=0)
            )
            for i in range(5)
        ),
        claims.once(Job(WorkKind.PROBE, "[192.0.2.2]:25", "other", work("other"), lease=5, keep=0)),
    )
    assert got == ["0", "1", "2", "3", "4", "other"]
    assert peak == 2  # the two addresses in parallel, never one address twice
    assert claims.in_use == 0  # the table only holds claims in use


async def test_local_claims_rest_between_two_pieces_of_work() -> None:
    claims = LocalClaims()
    started: list[float] = []
    loop = asyncio.get_running_loop()

    async def work() -> str:
        started.append(loop.time())
        return "x"

    await asyncio.gather(
        *(
            claims.once(
                Job(WorkKind.PROBE, "[192.0.2.1]:25", str(i), work, lease=5, keep=0, rest=0.1)
            )
            for i in range(3)
        )
    )
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(gaps) == 2 and min(gaps) >= 0.09, gaps
    assert claims.in_use == 1  # resting after the last one ...
    await asyncio.sleep(0.15)
    assert claims.in_use == 0  # ... then gone


async def test_local_claims_bound_the_wait_and_release_on_failure() -> None:
    claims = LocalClaims(grace=0.0)
    gate = asyncio.Event()

    async def stuck() -> str:
        await gate.wait()
        return "late"

    holder = asyncio.create_task(
        claims.once(Job(WorkKind.STS, "a.test", "a", stuck, lease=10, keep=0))
    )
    await asyncio.sleep(0)
    with pytest.raises(ClaimBusy):
        await claims.once(Job(WorkKind.STS, "a.test", "a", stuck, lease=0.05, keep=0))
    gate.set()
    assert await holder == "late"

    async def boom() -> str:
        raise RuntimeError("probe crashed")

    with pytest.raises(RuntimeError):
        await claims.once(Job(WorkKind.STS, "a.test", "a", boom, lease=1, keep=0))
    assert await claims.once(Job(WorkKind.STS, "a.test", "a", stuck, lease=1, keep=0)) == "late"
    assert claims.in_use == 0


async def _nothing() -> str:
    return ""


@pytest.mark.parametrize(
    "claim, result, lease, keep, rest",
    [
        ("", "a", 1.0, 0.0, 0.0),
        ("a.test", "", 1.0, 0.0, 0.0),
        ("a.test", "a", 0.0, 0.0, 0.0),
        ("a.test", "a", 1.0, -1.0, 0.0),
        ("a.test", "a", 1.0, 0.0, -1.0),
    ],
)
def test_a_job_without_names_or_with_impossible_times_is_refused(
    claim: str, result: str, lease: float, keep: float, rest: float
) -> None:
    with pytest.raises(ValueError):
        Job(WorkKind.STS, claim, result, _nothing, lease=lease, keep=keep, rest=rest)


# -- the claimed prober and fetcher ---------------------------------------------------------


async def test_the_claimed_prober_claims_each_address_and_shares_per_name() -> None:
    seen: list[tuple[str, ...]] = []

    async def prober(mx: MxHost, port: int) -> list[ProbeHost]:
        seen.append((*mx.addresses, str(port)))
        return [
            ProbeHost("mx.example.com", a, ProbeVerdict.VALID, probed_at=5.0) for a in mx.addresses
        ]

    claims = RecordingClaims()
    settings = ProbeSettings(total_timeout=20.0, host_min_interval=60.0)
    probe = claimed_prober(prober, claims, settings)
    mx = MxHost("MX.Example.com.", 10, DnsStatus.SECURE, ("192.0.2.1", "2001:db8::1"))
    found = await probe(mx, 2525)
    assert [h.address for h in found] == ["192.0.2.1", "2001:db8::1"]
    assert seen == [("192.0.2.1", "2525"), ("2001:db8::1", "2525")]  # one address a session
    assert [(j.kind, j.claim, j.result, j.lease, j.keep, j.rest) for j in claims.jobs] == [
        ("probe", "[192.0.2.1]:2525", "[192.0.2.1]:2525:mx.example.com", 25.0, 60.0, 1.0),
        ("probe", "[2001:db8::1]:2525", "[2001:db8::1]:2525:mx.example.com", 25.0, 60.0, 1.0),
    ]


async def test_a_busy_address_is_not_probed_and_counts_as_no_evidence() -> None:
    async def prober(mx: MxHost, port: int) -> list[ProbeHost]:
        raise AssertionError("must not probe")

    probe = claimed_prober(prober, RecordingClaims(busy=True), ProbeSettings(), clock=lambda: 9.0)
    found = await probe(MxHost("mx.example.com", 10, DnsStatus.INSECURE, ("192.0.2.1",)), 25)
    assert [(h.verdict, h.probed_at) for h in found] == [(ProbeVerdict.UNREACHABLE, 9.0)]


async def test_foreign_shared_findings_mean_a_probe_of_our_own() -> None:
    async def prober(mx: MxHost, port: int) -> list[ProbeHost]:
        return [ProbeHost("mx.example.com", "192.0.2.1", ProbeVerdict.EXPIRED)]

    probe = claimed_prober(prober, RecordingClaims(canned="not json"), ProbeSettings())
    found = await probe(MxHost("mx.example.com", 10, DnsStatus.INSECURE, ("192.0.2.1",)), 25)
    assert [h.verdict for h in found] == [ProbeVerdict.EXPIRED]


class Fetcher:
    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.calls = 0

    async def fetch(self, domain: str) -> bytes:
        self.calls += 1
        if self.body is None:
            raise FetchError(domain, "HTTP 404")
        return self.body


async def test_the_claimed_fetcher_shares_bodies_and_failures() -> None:
    body = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 86400\r\n"
    fetcher = ClaimedFetcher(Fetcher(body), RecordingClaims(), total_timeout=10.0)
    assert await fetcher.fetch("Example.COM.") == body
    failing = ClaimedFetcher(Fetcher(None), RecordingClaims(), total_timeout=10.0)
    with pytest.raises(FetchError, match="HTTP 404"):
        await failing.fetch("example.com")
    # Another host's result, as it travels through Redis:
    shared = json.dumps({"error": "connect failed"})
    other = Fetcher(body)
    via = ClaimedFetcher(other, RecordingClaims(canned=shared), total_timeout=10.0)
    with pytest.raises(FetchError, match="connect failed"):
        await via.fetch("example.com")
    assert other.calls == 0


@pytest.mark.parametrize("canned", ["[]", "{}", '{"body": "***"}', "nope"])
async def test_a_foreign_shared_fetch_means_a_fetch_of_our_own(canned: str) -> None:
    own = Fetcher(b"policy")
    fetcher = ClaimedFetcher(own, RecordingClaims(canned=canned), total_timeout=10.0)
    assert await fetcher.fetch("example.com") == b"policy"
    assert own.calls == 1


async def test_a_busy_fetch_is_done_here() -> None:
    own = Fetcher(b"policy")
    fetcher = ClaimedFetcher(own, RecordingClaims(busy=True), total_timeout=10.0)
    assert await fetcher.fetch("example.com") == b"policy"


# -- publishing and applying changes --------------------------------------------------------


async def test_the_publishing_store_announces_overrides_and_flushes_after_writing() -> None:
    inner = MemoryStore()
    sent: list[tuple[Change, bool]] = []

    async def publish(change: Change) -> None:
        written = (Kind.OVERRIDE, "a.test") in inner.records
        sent.append((change, written))

    store = PublishingStore(inner, publish)
    await store.put(Record(Kind.OVERRIDE, "a.test", "{}", None))
    await store.put(Record(Kind.PROBE, "b.test", "{}", None))  # evidence: nothing to say
    await store.delete(Kind.OVERRIDE, "a.test")
    await store.flush(None)
    await store.flush("b.test", mta_sts=False)
    assert sent == [
        (Change(ChangeKind.OVERRIDE, "a.test"), True),  # published after the write
        (Change(ChangeKind.OVERRIDE, "a.test"), False),
        (Change(ChangeKind.FLUSH, None), False),
        (Change(ChangeKind.FLUSH, "b.test", mta_sts=False), False),
    ]


class Service:
    def __init__(self) -> None:
        self.reloaded: list[str] = []
        self.forgotten: list[tuple[str | None, bool]] = []
        self.fail = False

    async def reload_override(self, key: str) -> None:
        if self.fail:
            raise StoreError("down")
        self.reloaded.append(key)

    def forget(self, key: str | None, *, mta_sts: bool = True) -> None:
        self.forgotten.append((key, mta_sts))

    async def load_overrides(self) -> None:
        if self.fail:
            raise StoreError("down")
        self.reloaded.append("*")


async def test_fleet_sync_applies_changes_and_survives_a_failing_store() -> None:
    service = Service()
    sync = FleetSync(service)
    await sync.apply(Change(ChangeKind.OVERRIDE, "a.test", "h1"))
    await sync.apply(Change(ChangeKind.FLUSH, None, "h1"))
    await sync.apply(Change(ChangeKind.FLUSH, "b.test", "h1", mta_sts=False))
    await sync.resync()
    assert service.reloaded == ["a.test", "*"]
    assert service.forgotten == [(None, True), ("b.test", False)]
    service.fail = True
    await sync.apply(Change(ChangeKind.OVERRIDE, "a.test", "h1"))  # logged, not raised
    await sync.resync()


async def test_a_service_applies_an_override_set_or_deleted_by_a_fleet_member() -> None:
    here, _, store = make(probe=FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)}))
    there = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    cache = ReplyCache(here)
    evidence = reply(await cache.reply_for(b"postfix example.test"))  # cached now
    assert evidence.startswith(b"OK verify")
    await there.set_override(Override("example.test", parse("encrypt"), author="root"))
    await here.reload_override("example.test")  # what FleetSync does on the message
    assert reply(await cache.reply_for(b"postfix example.test")) == b"OK encrypt"
    assert await there.delete_override("example.test")
    await here.reload_override("example.test")
    assert reply(await cache.reply_for(b"postfix example.test")) == evidence
    await here.reload_override("never-set.test")  # nothing to do, nothing raised
    here.forget(None)  # a fleet member's flush: memory only
    assert cache.cached(b"postfix example.test") is None


class RecordingSts(FakeSts):
    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[str | None] = []

    def forget(self, domain: str | None) -> None:
        self.forgotten.append(domain)
        super().forget(domain)


async def test_a_flush_keeps_cached_mta_sts_policies_unless_asked() -> None:
    # Security review L7: a flush on one host now reaches the memory of every host, so
    # cached policies (trust on first use, RFC 8461 5) stay unless the postmaster asks.
    sts = RecordingSts()
    svc, _, store = make(sts=sts)
    await store.put(Record(Kind.STS, "example.test", "{}", None))
    await store.put(Record(Kind.PROBE, "example.test", "{}", None))
    await svc.flush("example.test", mta_sts=False)
    assert (Kind.STS, "example.test") in store.records
    assert (Kind.PROBE, "example.test") not in store.records
    assert sts.forgotten == []
    await svc.flush(None, mta_sts=True)
    assert store.records == {}
    assert sts.forgotten == [None]


def test_policyctl_status_shows_the_fleet_link_only_with_redis() -> None:
    def status(store: str, fleet: FleetCounts | None) -> StatusResult:
        cache, lookups = CacheCounts(0, 0, 0), LookupCounts(0, 0, 0, 0)
        return StatusResult(
            "0", 1.0, (), store, None, None, cache, lookups, None, None, fleet, None
        )

    assert "fleet" not in render_status(status("sqlite", None))
    work = {"probe": {"worked": 1, "shared": 2, "local": 3, "busy": 0}}
    link = FleetCounts("down", work, published=4, received=0, publish_failures=0)
    shown = render_status(status("unix", link))
    line = next(ln for ln in shown.splitlines() if ln.startswith("fleet "))
    assert "link down" in line
    assert '"local":3' in line and "published=4" in line
