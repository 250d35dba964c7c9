"""The probe scheduler with a fake prober, an in-memory store and a clock the test moves."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from policyd.adapters.helo import default_helo_name
from policyd.adapters.store import Kind, Record, StoreError
from policyd.codec.records import probe_state_to_json
from policyd.core.evidence import (
    Destination,
    DestinationForm,
    DnsEvidence,
    DnsStatus,
    MxHost,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
)
from policyd.core.reach import Reach
from policyd.settings import ProbeSettings
from policyd.sources.probe import ProbeSource, make_prober
from tests.fakes import MemoryStore
from tests.unit.adapters.test_certverify import make_pki

T0 = 1_800_000_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProber:
    """Answers per MX host name with a verdict the test sets; can hold probes open."""

    verdicts: dict[str, ProbeVerdict] = field(default_factory=dict)
    default: ProbeVerdict = ProbeVerdict.VALID
    calls: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    active: int = 0
    peak: int = 0

    ports: list[int] = field(default_factory=list)

    async def __call__(self, mx: MxHost, port: int) -> list[ProbeHost]:
        self.calls.append(mx.name)
        self.ports.append(port)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            verdict = self.verdicts.get(mx.name, self.default)
            return [ProbeHost(mx.name, a, verdict) for a in mx.addresses]
        finally:
            self.active -= 1


def mx(name: str, preference: int = 10, status: DnsStatus = DnsStatus.SECURE) -> MxHost:
    addresses = ("192.0.2.25",) if status is not DnsStatus.FAILED else ()
    return MxHost(name, preference, status, addresses)


def dns(*hosts: MxHost) -> DnsEvidence:
    return DnsEvidence(DnsStatus.SECURE, hosts=hosts)


def dest(name: str) -> Destination:
    return Destination(name)


SETTINGS = ProbeSettings(
    concurrency=2,
    queue_size=10,
    reprobe_interval=86400.0,
    host_min_interval=60.0,
    backoff_initial=900.0,
    backoff_max=3600.0,
    confirm_probes=3,
    confirm_seconds=6 * 3600.0,
)


@dataclass
class World:
    store: MemoryStore
    prober: FakeProber
    clock: Clock
    source: ProbeSource
    changes: list[str]


def make_world(settings: ProbeSettings = SETTINGS) -> World:
    store, prober, clock = MemoryStore(), FakeProber(), Clock()
    source = ProbeSource(store, prober, settings, clock=clock)
    changes: list[str] = []
    source.on_change = changes.append
    return World(store, prober, clock, source, changes)


@asynccontextmanager
async def running(source: ProbeSource) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def wait_for(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition`` holds (no wall-clock sleeping)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_want_queues_once_and_probes() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    assert w.source.want(dest("example.test"), ev)
    assert not w.source.want(dest("example.test"), ev)  # already waiting
    assert w.source.stats().queued == 1
    async with running(w.source):
        await w.source.join()
    state = w.source.cached("example.test")
    assert state is not None
    assert state.level is ProbeLevel.VERIFY
    assert state.verified_names == ("mx.example.test",)
    assert w.prober.calls == ["mx.example.test"]
    stats = w.source.stats()
    assert (stats.queued, stats.running, stats.dropped, stats.done, stats.known) == (0, 0, 0, 1, 1)


async def test_full_queue_drops_and_counts() -> None:
    w = make_world(ProbeSettings(queue_size=2))
    ev = dns(mx("mx.example.test"))
    assert w.source.want(dest("a.test"), ev)
    assert w.source.want(dest("b.test"), ev)
    assert not w.source.want(dest("c.test"), ev)
    assert not w.source.want(dest("d.test"), ev)
    assert w.source.stats().dropped == 2
    assert w.source.stats().queued == 2


async def test_nothing_to_probe_is_not_queued() -> None:
    w = make_world()
    assert not w.source.want(dest("null.test"), dns())
    assert not w.source.want(
        dest("failed.test"), dns(mx("mx.failed.test", status=DnsStatus.FAILED))
    )
    assert not w.source.want(
        Destination("example.test", form=DestinationForm.PARENT), dns(mx("mx.x.test"))
    )
    assert not w.source.want(
        Destination("192.0.2.1", form=DestinationForm.ADDRESS), dns(mx("192.0.2.1"))
    )
    disabled = make_world(ProbeSettings(enabled=False))
    assert not disabled.source.want(dest("example.test"), dns(mx("mx.example.test")))


async def test_concurrency_is_bounded() -> None:
    w = make_world()
    w.prober.gate = asyncio.Event()
    for i in range(5):
        assert w.source.want(dest(f"d{i}.test"), dns(mx(f"mx.d{i}.test")))
    async with running(w.source):
        await wait_for(lambda: w.prober.active == 2)
        for _ in range(50):
            await asyncio.sleep(0)
        assert w.prober.active == 2
        assert w.source.stats().running == 2
        assert w.source.stats().queued == 3
        w.prober.gate.set()
        await w.source.join()
    assert w.prober.peak == 2
    assert w.source.stats().done == 5


async def test_max_mx_hosts_by_preference() -> None:
    w = make_world(ProbeSettings(max_mx_hosts=2))
    ev = dns(
        mx("mx30.test", 30),
        mx("mx10.test", 10),
        mx("broken.test", 5, DnsStatus.FAILED),
        mx("mx20.test", 20),
    )
    state = await w.source.probe_now(dest("example.test"), ev)
    assert w.prober.calls == ["mx10.test", "mx20.test"]
    assert [h.host for h in state.hosts] == ["mx10.test", "mx20.test"]


async def test_reprobe_interval() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    async with running(w.source):
        assert w.source.want(dest("example.test"), ev)
        await w.source.join()
        w.clock.now += SETTINGS.reprobe_interval - 1
        assert not w.source.want(dest("example.test"), ev)
        w.clock.now += 1
        assert w.source.want(dest("example.test"), ev)
        await w.source.join()
    assert len(w.prober.calls) == 2


async def test_changed_mx_set_is_probed_again_promptly() -> None:
    # The evidence in force describes mx.old.test; the MX moved to mx.new.test: waiting
    # out reprobe_interval (a day) would keep answering from the old servers.
    w = make_world()
    old, new = dns(mx("mx.old.test")), dns(mx("mx.new.test"))
    async with running(w.source):
        assert w.source.want(dest("example.test"), old)
        await w.source.join()
        assert not w.source.want(dest("example.test"), old)  # same hosts: not due
        # Politeness: not more often than host_min_interval, even for a moving MX set.
        w.clock.now += SETTINGS.host_min_interval - 1
        assert not w.source.want(dest("example.test"), new)
        w.clock.now += 1
        assert w.source.want(dest("example.test"), new)
        await w.source.join()
        state = w.source.cached("example.test")
        assert state is not None
        assert {h.host for h in state.hosts} == {"mx.new.test"}
        w.clock.now += SETTINGS.host_min_interval
        assert not w.source.want(dest("example.test"), new)  # now the probed set
    assert w.prober.calls == ["mx.old.test", "mx.new.test"]


async def test_probe_uses_the_port_of_the_next_hop() -> None:
    # [smtp.provider.test]:587 is delivered to on 587, whose certificate may differ from
    # port 25's; findings for one port are never reused for another.
    w = make_world()
    host = mx("smtp.provider.test")
    async with running(w.source):
        assert w.source.want(
            Destination("smtp.provider.test", 587, DestinationForm.HOST), dns(host)
        )
        assert w.source.want(
            Destination("smtp.provider.test", form=DestinationForm.HOST), dns(host)
        )
        await w.source.join()
    assert sorted(w.prober.ports) == sorted([587, SETTINGS.port])


async def test_submissions_port_is_not_probed() -> None:
    # Port 465 speaks TLS at once (RFC 8314): a STARTTLS probe has nothing to find.
    w = make_world()
    assert not w.source.want(
        Destination("smtp.provider.test", 465, DestinationForm.HOST), dns(mx("smtp.provider.test"))
    )


async def test_unreachable_backs_off_exponentially_up_to_max() -> None:
    w = make_world()
    w.prober.default = ProbeVerdict.UNREACHABLE
    ev, down = dns(mx("mx.down.test")), dest("down.test")
    delays = []
    async with running(w.source):
        assert w.source.want(down, ev)
        await w.source.join()
        for _ in range(4):
            start = w.clock.now
            while not w.source.want(down, ev):
                w.clock.now += 60
            delays.append(w.clock.now - start)
            await w.source.join()
    assert delays == [900, 1800, 3600, 3600]  # backoff_max is 3600 in SETTINGS
    state = w.source.cached("down.test")
    assert state is not None
    assert state.level is None
    assert len(w.prober.calls) == 5


async def test_reachable_again_resets_backoff() -> None:
    w = make_world()
    ev = dns(mx("mx.flaky.test"))
    w.prober.default = ProbeVerdict.UNREACHABLE
    await w.source.probe_now(dest("flaky.test"), ev)
    await w.source.probe_now(dest("flaky.test"), ev)
    w.prober.default = ProbeVerdict.VALID
    await w.source.probe_now(dest("flaky.test"), ev)
    w.clock.now += SETTINGS.reprobe_interval - 1
    assert not w.source.want(dest("flaky.test"), ev)


async def test_damping_holds_verify_then_applies(caplog: pytest.LogCaptureFixture) -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    key = "example.test"
    state = await w.source.probe_now(dest(key), ev)
    assert state.level is ProbeLevel.VERIFY
    assert w.changes == [key]

    # An on-path attacker swaps the certificate once: verify holds, the log says why.
    w.prober.default = ProbeVerdict.SELF_SIGNED
    w.clock.now += 3600
    with caplog.at_level(logging.INFO, logger="policyd.sources.probe"):
        state = await w.source.probe_now(dest(key), ev)
    assert state.level is ProbeLevel.VERIFY
    assert (state.pending, state.pending_count) == (ProbeLevel.ENCRYPT, 1)
    assert (
        "example.test: probe saw weaker level encrypt (1/3), holding verify: possible attack"
        in caplog.messages
    )
    assert "example.test: probe level=verify hosts=mx.example.test[192.0.2.25]=self-signed" in (
        caplog.messages
    )
    assert w.changes == [key]

    # Three sightings are not enough inside confirm_seconds ...
    w.clock.now += 3600
    state = await w.source.probe_now(dest(key), ev)
    w.clock.now += 3600
    state = await w.source.probe_now(dest(key), ev)
    assert state.level is ProbeLevel.VERIFY
    assert state.pending_count == 3
    # ... but once they span it, the weaker level applies.
    w.clock.now += 4 * 3600
    state = await w.source.probe_now(dest(key), ev)
    assert state.level is ProbeLevel.ENCRYPT
    assert state.pending is None
    assert w.changes == [key, key]


async def test_other_verified_names_are_held_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = make_world()
    async with running(w.source):
        assert w.source.want(dest("example.test"), dns(mx("mx.example.test")))
        await w.source.join()
        w.clock.now += SETTINGS.host_min_interval
        with caplog.at_level(logging.WARNING):
            assert w.source.want(dest("example.test"), dns(mx("mx.forged.test")))
            await w.source.join()
    state = w.source.cached("example.test")
    assert state is not None
    assert state.verified_names == ("mx.example.test",)
    assert state.pending_names == ("mx.forged.test",)
    assert w.changes == ["example.test"]  # the held names changed no answer
    assert (
        "example.test: probe verified other MX names mx.forged.test (1/3), "
        "keeping mx.example.test: possible attack"
    ) in caplog.messages


async def test_held_downgrade_is_reprobed_sooner() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    await w.source.probe_now(dest("example.test"), ev)
    w.prober.default = ProbeVerdict.NO_STARTTLS
    w.clock.now += 100
    await w.source.probe_now(dest("example.test"), ev)
    # confirm_seconds 6h over confirm_probes 3: look again after 3h, not after a day.
    w.clock.now += 3 * 3600 - 1
    assert not w.source.want(dest("example.test"), ev)
    w.clock.now += 1
    assert w.source.want(dest("example.test"), ev)


async def test_stronger_level_applies_at_once() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    w.prober.default = ProbeVerdict.NO_STARTTLS
    assert (await w.source.probe_now(dest("x.test"), ev)).level is ProbeLevel.MAY
    w.prober.default = ProbeVerdict.VALID
    w.clock.now += 100
    assert (await w.source.probe_now(dest("x.test"), ev)).level is ProbeLevel.VERIFY
    assert w.changes == ["x.test", "x.test"]


async def test_unchanged_level_does_not_notify() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    await w.source.probe_now(dest("x.test"), ev)
    w.clock.now += 100
    await w.source.probe_now(dest("x.test"), ev)
    assert w.changes == ["x.test"]


async def test_persisted_and_loaded() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    state = await w.source.probe_now(dest("example.test"), ev)
    record = await w.store.get(Kind.PROBE, "example.test")
    assert record is not None
    assert record.expires_at == T0 + SETTINGS.retention

    # Also in the store: an expired result and a corrupt one.
    await w.store.put(Record(Kind.PROBE, "old.test", probe_state_to_json(state), T0 - 1))
    await w.store.put(Record(Kind.PROBE, "bad.test", "{not json", None))

    again = ProbeSource(w.store, FakeProber(), SETTINGS, clock=w.clock)
    await again.load()
    assert again.cached("example.test") == state
    assert again.cached("old.test") is None
    assert again.cached("bad.test") is None
    # Loaded results count for the reprobe interval too.
    assert not again.want(dest("example.test"), ev)
    w.clock.now += SETTINGS.reprobe_interval
    assert again.want(dest("example.test"), ev)


class FailingStore(MemoryStore):
    async def put(self, record: Record) -> None:
        raise StoreError("disk full")


async def test_store_failure_keeps_memory_state(caplog: pytest.LogCaptureFixture) -> None:
    source = ProbeSource(FailingStore(), FakeProber(), SETTINGS, clock=Clock())
    with caplog.at_level(logging.WARNING):
        state = await source.probe_now(dest("example.test"), dns(mx("mx.example.test")))
    assert source.cached("example.test") == state
    assert "example.test: cannot store the probe result: disk full" in caplog.messages


async def test_shared_mx_host_is_probed_once_within_host_min_interval() -> None:
    w = make_world()
    shared = mx("mx.hoster.test")
    async with running(w.source):
        assert w.source.want(dest("a.test"), dns(shared))
        assert w.source.want(dest("b.test"), dns(shared))
        await w.source.join()
        assert w.prober.calls == ["mx.hoster.test"]
        w.clock.now += SETTINGS.host_min_interval
        assert w.source.want(dest("c.test"), dns(shared))
        await w.source.join()
    assert w.prober.calls == ["mx.hoster.test", "mx.hoster.test"]
    assert w.source.cached("b.test") is not None


async def test_forgetting_everything_forgets_recent_host_findings() -> None:
    # policyctl flush (no key): the next destination using a shared host probes it again
    # at once instead of reusing what was seen before the flush.
    w = make_world()
    shared = mx("mx.hoster.test")
    async with running(w.source):
        assert w.source.want(dest("a.test"), dns(shared))
        await w.source.join()
        w.source.forget("a.test")  # one key: the host's recent findings stay
        assert w.source.want(dest("b.test"), dns(shared))
        await w.source.join()
        assert w.prober.calls == ["mx.hoster.test"]
        w.source.forget(None)
        assert w.source.want(dest("c.test"), dns(shared))
        await w.source.join()
    assert w.prober.calls == ["mx.hoster.test", "mx.hoster.test"]


async def test_probe_now_joins_a_running_probe() -> None:
    w = make_world()
    w.prober.gate = asyncio.Event()
    ev = dns(mx("mx.example.test"))
    first = asyncio.create_task(w.source.probe_now(dest("example.test"), ev))
    second = asyncio.create_task(w.source.probe_now(dest("example.test"), ev))
    await wait_for(lambda: w.prober.active == 1)
    w.prober.gate.set()
    assert await first == await second
    assert w.prober.calls == ["mx.example.test"]


async def test_probe_now_with_nothing_to_probe() -> None:
    w = make_world()
    assert await w.source.probe_now(dest("null.test"), dns()) == ProbeState(level=None)
    assert w.prober.calls == []


async def test_worker_survives_a_failing_prober(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(host: MxHost, port: int) -> list[ProbeHost]:
        raise RuntimeError("bug")

    source = ProbeSource(MemoryStore(), broken, SETTINGS, clock=Clock())
    assert source.want(dest("example.test"), dns(mx("mx.example.test")))
    with caplog.at_level(logging.ERROR):
        async with running(source):
            await source.join()
    assert "example.test: probe failed" in caplog.messages
    assert source.stats().done == 1
    assert not source.want(dest("example.test"), dns(mx("mx.example.test")))  # backs off


async def test_forget() -> None:
    w = make_world()
    ev = dns(mx("mx.example.test"))
    await w.source.probe_now(dest("example.test"), ev)
    w.source.forget("example.test")
    assert w.source.cached("example.test") is None
    assert w.source.want(dest("example.test"), ev)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"queue_size": 0},
        {"max_mx_hosts": 0},
        {"backoff_initial": 0.0},
        {"backoff_initial": 10.0, "backoff_max": 5.0},
        {"port": 0},
        {"helo_name": "two words"},
        {"banner_timeout": 0.0},
        {"confirm_probes": 0},
        {"reprobe_interval": float("nan")},
    ],
)
def test_settings_validate(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProbeSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_defaults() -> None:
    s = ProbeSettings()
    assert (s.concurrency, s.queue_size, s.max_mx_hosts) == (8, 1000, 3)
    assert (s.confirm_probes, s.confirm_seconds) == (3, 21600.0)
    assert s.timeouts.total == 60.0


async def test_make_prober_without_addresses(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_pki().root.public_bytes(serialization.Encoding.PEM))
    prober = make_prober(
        ProbeSettings(helo_name="probe.example.test"), str(ca), Clock(), reach=Reach()
    )
    failed = MxHost("mx.example.test", 10, DnsStatus.FAILED, address_error="timeout")
    found = await prober(failed, 25)
    assert [(h.verdict, h.detail, h.probed_at) for h in found] == [
        (ProbeVerdict.UNREACHABLE, "timeout", T0)
    ]


async def test_stopping_the_workers_stops_shared_probes() -> None:
    w = make_world()
    w.prober.gate = asyncio.Event()
    assert w.source.want(dest("example.test"), dns(mx("mx.example.test")))
    async with running(w.source):
        await wait_for(lambda: w.prober.active == 1)
    await wait_for(lambda: w.prober.active == 0)
    assert w.source.cached("example.test") is None


async def test_make_prober_refuses_loopback_unless_allowed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_pki().root.public_bytes(serialization.Encoding.PEM))
    settings = ProbeSettings(helo_name="probe.example.test")
    local = MxHost("mx.example.test", 10, DnsStatus.SECURE, ("127.0.0.1",))
    found = await make_prober(settings, str(ca), Clock(), reach=Reach())(local, 25)
    assert [h.verdict for h in found] == [ProbeVerdict.UNREACHABLE]
    assert found[0].detail.startswith("address not allowed: 127.0.0.1 is loopback")


def test_the_default_helo_name_is_postfix_myhostname(tmp_path: Path) -> None:
    postconf = tmp_path / "postconf"
    postconf.write_text("#!/bin/sh\necho mail.example.net\n")
    postconf.chmod(0o755)
    assert default_helo_name((str(postconf), "-h", "myhostname")) == "mail.example.net"


def test_without_postfix_the_default_helo_name_is_the_fqdn(tmp_path: Path) -> None:
    fqdn = socket.getfqdn()
    expected = fqdn if fqdn and " " not in fqdn else "localhost"
    assert default_helo_name((str(tmp_path / "no-postconf"),)) == expected
    broken = tmp_path / "postconf"
    broken.write_text("#!/bin/sh\necho 'two words'\nexit 0\n")
    broken.chmod(0o755)
    assert default_helo_name((str(broken),)) == expected
