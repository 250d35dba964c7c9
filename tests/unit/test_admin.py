"""The control plane's operations (policyd/admin.py) without a socket: warm and check for
policyd-milter, and the dispatch of every request by the control server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from policyd import admin as admin_module
from policyd.admin import MAX_WARM_TASKS, Admin, AdminError, Facts
from policyd.codec import control
from policyd.codec.control import ErrorCode, results
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    ProbeState,
    StsEvidence,
    StsMode,
    StsPolicy,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.core.report import build_report as core_build_report
from policyd.server.control import ControlServer, Peer
from policyd.service import PolicyService
from policyd.settings import ControlSettings
from policyd.sources.fetch_queue import QueueStats
from policyd.sources.probe import ProbeStats
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore

NOW = 1_700_000_000.0
PEER = Peer(1, 0, 0, "root")


def _host(name: str) -> MxHost:
    return MxHost(name, 10, DnsStatus.INSECURE, ("192.0.2.7",))


class Prober(FakeProbe):
    async def probe_now(self, dest: Destination, dns: DnsEvidence) -> ProbeState:
        raise AssertionError("not probed in these tests")

    def stats(self) -> ProbeStats:
        return ProbeStats(queued=0, running=0, dropped=0, done=0, known=len(self.states))


class Sts(FakeSts):
    def queue_stats(self) -> QueueStats:
        return QueueStats(running=0, queued=0, dropped=0, preempted=0)


class Reload:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.ok


def make_admin(
    dane: FakeDane, reload: Callable[[], Any] | None = None
) -> tuple[Admin, PolicyService]:
    sts = Sts(
        {
            "sts.example": StsEvidence(
                StsPolicy(StsMode.ENFORCE, ("mx.sts.example",), 86400, "1", NOW - 60)
            )
        }
    )
    insecure = DnsEvidence(DnsStatus.INSECURE, hosts=(_host("mail.elsewhere.net"),))
    dane.answers["sts.example"] = insecure
    store, probe = MemoryStore(), Prober()
    service = PolicyService(
        DEFAULT_PROFILES, store, dane, sts, probe, lookup_budget=2.0, clock=lambda: NOW
    )
    admin = Admin(
        service,
        dane=dane,
        sts=sts,
        probe=probe,
        events=store,
        reload=reload or Reload(),
        clear_dns=lambda: None,
        facts=Facts(("unix:/run/policyd/policyd.sock",), "sqlite", started_at=0.0),
        clock=lambda: NOW,
        monotonic=lambda: 90.0,
    )
    return admin, service


def _request(doc: dict[str, Any]) -> control.Request:
    return control.decode_request(json.dumps({"v": 1, **doc}).encode())


async def _settled(done: Callable[[], bool]) -> None:
    """Let background tasks run until ``done``: zero-delay yields, never the clock."""
    for _ in range(10_000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("background work did not finish")


async def test_check_reports_an_unmeetable_sts_policy() -> None:
    admin, _ = make_admin(FakeDane())
    result = await admin.check(control.parse_destination("STS.example"))
    assert result.destination == "sts.example"
    assert result.rule == "mta-sts"
    assert "no MX host (mail.elsewhere.net)" in str(result.problem)
    fine = await admin.check(control.parse_destination("a.example"))
    assert fine.problem is None


async def test_check_reports_no_problem_for_a_dry_run_profile() -> None:
    """A dry-run postfix profile enforces nothing: the milter has nothing to act on."""
    admin, service = make_admin(FakeDane())
    service.set_profiles(
        tuple(dataclasses.replace(p, dry_run=p.name == "postfix") for p in service.profiles)
    )
    result = await admin.check(Destination("sts.example"))
    assert result.rule == "mta-sts"  # what it would have answered
    assert result.problem is None


async def test_warm_starts_lookups_in_the_background_and_answers_at_once() -> None:
    dane = FakeDane(gate=asyncio.Event())
    admin, service = make_admin(dane)
    req = _request({"cmd": "warm", "args": {"domains": ["a.example", "b.example", "a.example"]}})
    assert isinstance(req, control.Warm)
    # warm is not a coroutine: it cannot wait for the lookups, which wait on the gate.
    assert admin.warm(req.destinations) == results.Warmed(scheduled=2, requested=3)
    await _settled(lambda: dane.calls == 2)
    assert service.remembered() == {}
    assert dane.gate is not None
    dane.gate.set()
    await _settled(lambda: len(service.remembered()) == 2)
    assert dane.calls == 2
    assert {k for _p, k in service.remembered()} == {"a.example", "b.example"}
    await admin.close()


async def test_warm_is_bounded() -> None:
    dane = FakeDane(gate=asyncio.Event())
    admin, service = make_admin(dane)
    total = 0
    for batch in range(4):
        names = [f"d{batch}-{i}.example" for i in range(control.MAX_WARM_DOMAINS)]
        total += admin.warm(tuple(Destination(n) for n in names)).scheduled
    assert total == MAX_WARM_TASKS
    assert dane.gate is not None
    dane.gate.set()
    await _settled(lambda: len(service.remembered()) == MAX_WARM_TASKS)
    await _settled(lambda: admin.warm(()).scheduled == 0 and not admin._warming)
    result = admin.warm((Destination("late.example"),))
    assert result == results.Warmed(scheduled=1, requested=1)  # the bound frees up again
    await admin.close()


def test_warm_and_check_are_read_level_and_validated() -> None:
    assert not control.Command.WARM.writes and not control.Command.CHECK.writes
    too_many = [f"d{i}.example" for i in range(control.MAX_WARM_DOMAINS + 1)]
    for doc in (
        {"cmd": "warm", "args": {"domains": too_many}},
        {"cmd": "warm", "args": {"domains": []}},
        {"cmd": "warm", "args": {"domains": "a.example"}},
        {"cmd": "warm", "args": {"domains": ["a..example"]}},
        {"cmd": "check", "args": {"domain": "a.example", "x": 1}},
    ):
        with pytest.raises(control.ControlProtocolError):
            _request(doc)
    warm = control.Warm((Destination("a.example"), Destination("b.example")))
    assert control.decode_request(control.encode_request(warm)) == warm
    check = control.Check(Destination("a.example"))
    assert control.decode_request(control.encode_request(check)) == check


async def test_reload_failure_is_an_internal_error_never_a_success() -> None:
    admin, _ = make_admin(FakeDane(), Reload(ok=False))
    with pytest.raises(AdminError) as caught:
        await admin.reload()
    assert caught.value.code is ErrorCode.INTERNAL


async def test_the_server_dispatches_every_command_to_its_operation() -> None:
    """Each request reaches its own operation and its result decodes as that command's
    type: a reload is never the fall-through of an unhandled command (review D1)."""
    reload = Reload()
    admin, _ = make_admin(FakeDane(), reload)
    server = ControlServer(admin, "/nonexistent", mode=0o660, group="", access=ControlSettings)
    dest = Destination("sts.example")
    requests: list[control.Request] = [
        control.OverrideSet(dest, control.parse_policy("encrypt"), 60.0, "why"),
        control.OverrideList(),
        control.OverrideDel(dest),
        control.Explain(dest),
        control.Flush(dest),
        control.Report(3600),
        control.Status(),
        control.Warm((dest,)),
        control.Check(dest),
        control.Reload(),
    ]
    kinds = []
    for req in requests:
        doc = await server.run(req, PEER)
        kinds.append(type(results.decode_result(req, doc)).__name__)
    assert kinds == [
        "OverrideDoc", "Overrides", "OverrideDeleted", "ExplainResult", "Flushed",
        "ReportResult", "StatusResult", "Warmed", "Checked", "Reloaded",
    ]  # fmt: skip
    assert reload.calls == 1
    with pytest.raises(AdminError, match="no override"):
        await server.run(control.OverrideDel(dest), PEER)
    await admin.close()


# -- report off the event loop (security review L7) --------------------------------------


async def test_report_is_built_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorting a million verdicts takes seconds: they must not be the lookups' seconds."""
    admin, service = make_admin(FakeDane())
    await service.answer(Destination("sts.example"), service.profiles[0])
    loop_thread = threading.get_ident()
    built_in: list[int] = []
    real = core_build_report

    def build_report(*args: Any, **kwargs: Any) -> Any:
        built_in.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(admin_module, "build_report", build_report)
    result = await admin.report(3600.0)
    assert built_in and loop_thread not in built_in
    assert "sts.example" in json.dumps(result.to_json())  # the snapshot reached the report


async def test_reports_are_built_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    admin, _ = make_admin(FakeDane())
    running = 0
    most = 0
    real = core_build_report

    def build_report(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.01)  # long enough for a second thread to start, if one were allowed
        running -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(admin_module, "build_report", build_report)
    await asyncio.gather(*(admin.report(60.0) for _ in range(4)))
    assert most == 1
