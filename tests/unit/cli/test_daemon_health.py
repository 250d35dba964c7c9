"""Nothing dies silently: housekeeping steps survive failures, the watchdog stops with a
dead background task, probe states are pruned."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from policyd.adapters.store import ExpiringStore, Kind, Record, StoreError
from policyd.adapters.store_counted import CountedStore
from policyd.adapters.store_sqlite import SqliteStore
from policyd.adapters.write_behind import BatchStore
from policyd.cli import daemon as daemon_module
from policyd.config import Config, load
from policyd.core.evidence import ProbeLevel, ProbeState
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server.notify import Notifier
from policyd.service import PolicyService
from policyd.settings import ProbeSettings
from policyd.sources import probe as probe_module
from policyd.sources.probe import ProbeSource
from policyd.sources.sts import StsSource
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, event, no_time, run_ready


class FlakyStore(MemoryStore):
    """scan raises once (RuntimeError: a bug, or StoreError: a damaged file)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error: Exception | None = error
        self.expired_calls = 0

    async def scan(self, kind: Kind) -> list[Record]:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return await super().scan(kind)

    async def delete_expired(self, now: float) -> int:
        self.expired_calls += 1
        return 0


class CountingSts(StsSource):
    calls = 0

    async def refresh_due(self) -> int:
        self.calls += 1
        return 0


async def no_fetch(domain: str) -> bytes:
    raise AssertionError("no fetch expected")


def parts(store: MemoryStore) -> tuple[PolicyService, CountingSts, ProbeSource]:
    service = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    sts = CountingSts(store, None, None)  # type: ignore[arg-type]
    probe = ProbeSource(store, None)  # type: ignore[arg-type]
    return service, sts, probe


@pytest.mark.parametrize("error", [RuntimeError("boom"), StoreError("disk image is malformed")])
async def test_housekeeping_logs_a_failing_step_and_runs_the_others(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(error)
    service, sts, probe = parts(store)
    with caplog.at_level(logging.ERROR, logger="policyd"):
        await daemon_module.housekeep(service, sts, probe, store)
    assert "reload overrides" in caplog.text
    assert sts.calls == 1  # the steps after the failing one ran
    assert store.expired_calls == 1
    # and the next round is whole again
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="policyd"):
        await daemon_module.housekeep(service, sts, probe, store)
    assert caplog.text == ""
    assert sts.calls == 2


async def test_watchdog_stops_pinging_when_a_task_dies(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier()
    sent: list[str] = []
    monkeypatch.setattr(notifier, "_send", sent.append)
    monkeypatch.setattr(notifier, "watchdog_interval", lambda: 0.01)
    alive = True
    watchdog = asyncio.create_task(notifier.watchdog(lambda: alive, sleep=no_time))
    await run_ready(5)
    pings = len(sent)
    assert pings >= 2
    alive = False
    with caplog.at_level(logging.ERROR, logger="policyd"):
        await asyncio.wait_for(watchdog, 1.0)  # it ends: no more pings
    assert "systemd will restart" in caplog.text
    await run_ready(5)
    assert len(sent) <= pings + 1


async def test_daemon_reports_tasks_alive_until_one_dies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = daemon_module.Daemon(Config())

    async def dies() -> None:
        raise RuntimeError("bug")

    async def runs() -> None:
        await asyncio.sleep(3600)

    d._spawn(runs(), "runs")
    assert d.tasks_alive()
    with caplog.at_level(logging.ERROR, logger="policyd"):
        d._spawn(dies(), "dies")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert not d.tasks_alive()
    assert "dies died: the systemd watchdog is no longer fed" in caplog.text
    assert "RuntimeError: bug" in caplog.text  # the task set logs the traceback
    await d._tasks.cancel_all()


def test_probe_states_are_pruned_by_age_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 10_000_000.0
    probe = ProbeSource(
        MemoryStore(),
        None,  # type: ignore[arg-type]
        ProbeSettings(retention=1000.0),
        clock=lambda: now,
    )
    for i in range(10):
        probe._states[f"old{i}"] = ProbeState(ProbeLevel.VERIFY, probed_at=now - 2000)
        probe._due[f"old{i}"] = now - 1
        probe._failures[f"old{i}"] = 1
    for i in range(10):
        probe._states[f"new{i}"] = ProbeState(ProbeLevel.VERIFY, probed_at=now - i)
    monkeypatch.setattr(probe_module, "MAX_STATES", 5)
    assert probe.prune() == 15
    assert sorted(probe._states) == [f"new{i}" for i in range(5)]
    assert not any(k.startswith("old") for k in (*probe._due, *probe._failures))


async def test_a_task_that_returns_is_not_dead() -> None:
    # The watchdog task outside systemd, or an alert watcher with nothing to do, returns.
    d = daemon_module.Daemon(Config())

    async def nothing_to_do() -> None:
        return None

    d._spawn(nothing_to_do(), "nothing to do")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert d.tasks_alive()


async def test_counted_store_passes_batches_and_expiry_through(tmp_path: Path) -> None:
    inner = await SqliteStore.open(f"sqlite://{tmp_path / 'p.db'}")
    store = CountedStore(inner)
    assert isinstance(store, BatchStore) and isinstance(store, ExpiringStore)
    await store.write_batch([Record(Kind.PROBE, "old.example", "{}", 1.0)], [event(1.0, "k")])
    assert await store.events(0.0) == [event(1.0, "k")]
    assert await store.delete_expired(2.0) == 1
    await store.close()
    memory = CountedStore(MemoryStore())  # no batch, no expiry of its own
    await memory.write_batch([Record(Kind.PROBE, "a", "{}", 1.0)], [event(1.0, "a")])
    assert await memory.get(Kind.PROBE, "a") is not None
    assert await memory.delete_expired(2.0) == 0


class _ReloadedService:
    """What a reload touches on the service."""

    dane_temp_after = 0.0

    def set_profiles(self, profiles: object) -> None:
        pass

    async def load_overrides(self) -> None:
        pass


async def test_a_reload_names_a_changed_fleet_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policyd.toml"
    path.write_text("")
    d = daemon_module.Daemon(load(str(path)))
    d.service = _ReloadedService()  # type: ignore[assignment]
    path.write_text("[fleet]\nenabled = false\n")
    with caplog.at_level(logging.WARNING, logger="policyd"):
        assert await d.reload()
    assert "reload: changes to [fleet] take effect after a restart" in caplog.text
