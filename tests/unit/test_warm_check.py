"""The daemon's side of policyd-milter's two control commands, ``warm`` and ``check``
(:class:`policyd.server.control_commands.Commands`), driven without sockets. Lookups wait
on an event the test sets: no sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from policyd.codec import control
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    StsEvidence,
    StsMode,
    StsPolicy,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server.control_commands import MAX_WARM_TASKS, Commands, Peer
from policyd.service import PolicyService
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore

NOW = 1_700_000_000.0
PEER = Peer(1, 0, 0, "root")


def _host(name: str) -> MxHost:
    return MxHost(name, 10, DnsStatus.INSECURE, ("192.0.2.7",))


class Daemon:
    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.config: Any = None
        self.server: Any = None
        self.started_at = 0.0

    async def reload(self) -> bool:
        return True

    def clear_dns_cache(self) -> None:
        pass


def make_commands(dane: FakeDane) -> tuple[Commands, PolicyService]:
    sts = FakeSts(
        {
            "sts.example": StsEvidence(
                StsPolicy(StsMode.ENFORCE, ("mx.sts.example",), 86400, "1", NOW - 60)
            )
        }
    )
    insecure = DnsEvidence(DnsStatus.INSECURE, hosts=(_host("mail.elsewhere.net"),))
    dane.answers["sts.example"] = insecure
    service = PolicyService(
        DEFAULT_PROFILES,
        MemoryStore(),
        dane,
        sts,
        FakeProbe(),
        lookup_budget=2.0,
        clock=lambda: NOW,
    )
    return Commands(Daemon(service), lambda: NOW), service


def _request(doc: dict[str, Any]) -> control.Request:
    return control.decode_request(json.dumps({"v": 1, **doc}).encode())


async def _warmed(commands: Commands, gate: asyncio.Event) -> None:
    """Open the gate and wait for every background lookup that warm started."""
    tasks = list(commands._warming.values())
    gate.set()
    await asyncio.gather(*tasks)
    assert not commands._warming


async def test_check_reports_an_unmeetable_sts_policy() -> None:
    commands, _ = make_commands(FakeDane())
    result = await commands.run(_request({"cmd": "check", "args": {"domain": "STS.example"}}), PEER)
    assert isinstance(result, dict)
    assert result["destination"] == "sts.example"
    assert result["rule"] == "mta-sts"
    assert "no MX host (mail.elsewhere.net)" in str(result["problem"])
    fine = await commands.run(_request({"cmd": "check", "args": {"domain": "a.example"}}), PEER)
    assert isinstance(fine, dict) and fine["problem"] is None


async def test_check_reports_no_problem_for_a_dry_run_profile() -> None:
    """A dry-run postfix profile enforces nothing: the milter has nothing to act on."""
    commands, service = make_commands(FakeDane())
    service.set_profiles(
        tuple(dataclasses.replace(p, dry_run=p.name == "postfix") for p in service.profiles)
    )
    result = await commands.run(_request({"cmd": "check", "args": {"domain": "sts.example"}}), PEER)
    assert isinstance(result, dict)
    assert result["rule"] == "mta-sts"  # what it would have answered
    assert result["problem"] is None


async def test_warm_starts_lookups_in_the_background_and_answers_at_once() -> None:
    gate = asyncio.Event()
    dane = FakeDane(gate=gate)
    commands, service = make_commands(dane)
    req = _request({"cmd": "warm", "args": {"domains": ["a.example", "b.example", "a.example"]}})
    # The lookups cannot finish until the gate opens: an answer now is an answer at once.
    result = await asyncio.wait_for(commands.run(req, PEER), 5.0)
    assert result == {"scheduled": 2, "requested": 3}
    assert not service.remembered()
    await _warmed(commands, gate)
    assert dane.calls == 2
    assert {k for _p, k in service.remembered()} == {"a.example", "b.example"}


async def test_warm_is_bounded() -> None:
    gate = asyncio.Event()
    dane = FakeDane(gate=gate)
    commands, _ = make_commands(dane)
    total = 0
    for batch in range(4):
        names = [f"d{batch}-{i}.example" for i in range(control.MAX_WARM_DOMAINS)]
        req = control.Warm(tuple(Destination(n) for n in names))
        result = await commands.run(req, PEER)
        assert isinstance(result, dict) and isinstance(result["scheduled"], int)
        total += result["scheduled"]
    assert total == MAX_WARM_TASKS
    await _warmed(commands, gate)  # the background lookups finish
    result = await commands.run(control.Warm((Destination("late.example"),)), PEER)
    assert result == {"scheduled": 1, "requested": 1}  # the bound frees up again
    await _warmed(commands, gate)


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
