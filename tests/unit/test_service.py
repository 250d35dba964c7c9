"""PolicyService with fake sources: caching, coalescing, overrides, TEMP bounds, logging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from policyd.adapters.store import Kind, Record
from policyd.codec import netstring
from policyd.codec.postfix_policy import parse
from policyd.core.evidence import (
    DnsEvidence,
    DnsStatus,
    Override,
    ProbeLevel,
    ProbeState,
    StsEvidence,
    StsMode,
    StsPolicy,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.service import PolicyService
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono


def make(
    dane: FakeDane | None = None,
    sts: FakeSts | None = None,
    probe: FakeProbe | None = None,
    budget: float = 1.0,
) -> tuple[PolicyService, Clock, MemoryStore]:
    clock = Clock()
    store = MemoryStore()
    svc = PolicyService(
        DEFAULT_PROFILES,
        store,
        dane or FakeDane(),
        sts or FakeSts(),
        probe or FakeProbe(),
        lookup_budget=budget,
        clock=clock.wall,
        monotonic=clock.monotonic,
    )
    return svc, clock, store


def reply(encoded: bytes) -> bytes:
    dec = netstring.Decoder()
    dec.receive_data(encoded)
    out = dec.next_payload()
    assert isinstance(out, bytes)
    return out


async def test_miss_then_hit_from_memory() -> None:
    dane = FakeDane()
    svc, _, _ = make(dane=dane)
    payload = b"postfix example.test"
    assert svc.cached_reply(payload) is None
    assert reply(await svc.reply_for(payload)) == b"NOTFOUND "
    assert svc.cached_reply(payload) == netstring.encode(b"NOTFOUND ")
    assert dane.calls == 1


async def test_cached_answer_expires_with_evidence() -> None:
    svc, clock, _ = make()
    payload = b"postfix example.test"
    await svc.reply_for(payload)
    clock.mono += 299
    assert svc.cached_reply(payload) is not None
    clock.mono += 2
    assert svc.cached_reply(payload) is None


async def test_sts_enforce_and_profiles() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx.example.test",), 86400, "1", NOW - 10)
    svc, _, _ = make(sts=FakeSts({"example.test": StsEvidence(pol)}))
    got = reply(await svc.reply_for(b"postfix example.test"))
    assert got == b"OK secure match=mx.example.test servername=hostname"
    strict = reply(await svc.reply_for(b"strict example.test"))
    assert b"policy_type=sts policy_domain=example.test mx_host_pattern=mx.example.test" in strict


async def test_unknown_profile_and_bad_key_are_perm() -> None:
    svc, _, _ = make()
    assert reply(await svc.reply_for(b"nosuch example.test")).startswith(b"PERM unknown map")
    assert reply(await svc.reply_for(b"postfix exa mple")).startswith(b"PERM")
    assert reply(await svc.reply_for(b"postfix ")).startswith(b"PERM")
    assert svc.stats.perm == 3


async def test_override_wins_and_invalidates_cache() -> None:
    svc, _, _ = make(probe=FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)}))
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    await svc.set_override(Override("example.test", parse("encrypt"), author="root"))
    assert svc.cached_reply(b"postfix example.test") is None
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK encrypt"
    assert await svc.delete_override("example.test")
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"


async def test_expired_override_no_longer_applies() -> None:
    svc, clock, _ = make()
    await svc.set_override(Override("example.test", parse("encrypt"), expires_at=NOW + 60))
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK encrypt"
    clock.now += 61
    clock.mono += 61
    assert svc.cached_reply(b"postfix example.test") is None
    assert reply(await svc.reply_for(b"postfix example.test")) == b"NOTFOUND "


async def test_overrides_survive_reload_from_store() -> None:
    svc, _, store = make()
    await svc.set_override(Override("example.test", parse("secure match=.example.test")))
    fresh = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    await fresh.load_overrides()
    got = reply(await fresh.reply_for(b"postfix example.test"))
    assert got == b"OK secure match=.example.test"


async def test_newline_in_an_override_comment_never_makes_temp() -> None:
    # A stored comment with a newline (written by hand or by an older policyd) made every
    # lookup of the key TEMP: Verdict refused the two-line reason.
    svc, _, store = make()
    doc = '{"policy": "encrypt", "comment": "ticket 1\\nsecond line", "author": "root"}'
    await store.put(Record(Kind.OVERRIDE, "example.test", doc, None))
    await svc.load_overrides()
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK encrypt"
    ov = svc.overrides["example.test"]
    assert ov.comment == "ticket 1\\nsecond line"  # escaped on load, one line
    # The core escapes rather than refuses even an unescaped one.
    await svc.set_override(Override("example.test", parse("verify"), comment="a\nb"))
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify"


async def test_unreadable_overrides_are_skipped_and_the_rest_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc, _, store = make()
    bad = {
        "inject.test": '{"policy": "verify match=.inject.test,tafile=/etc/passwd"}',
        "nul.test": '{"policy": "encrypt ciphers=high\\u0000"}',
        "huge.test": '{"policy": "encrypt", "expires_at": 1' + "0" * 400 + "}",
        "created.test": '{"policy": "encrypt", "created_at": 1' + "0" * 400 + "}",
        "list.test": "[1, 2]",
        "notjson.test": "{",
    }
    for key, doc in bad.items():
        await store.put(Record(Kind.OVERRIDE, key, doc, None))
    await store.put(Record(Kind.OVERRIDE, "good.test", '{"policy": "encrypt"}', None))
    with caplog.at_level(logging.ERROR):
        await svc.load_overrides()
    assert set(svc.overrides) == {"good.test"}
    for key in bad:
        assert f"{key}: ignoring unreadable override" in caplog.text
    assert reply(await svc.reply_for(b"postfix inject.test")) == b"NOTFOUND "


async def test_concurrent_lookups_share_one_gathering() -> None:
    dane = FakeDane(delay=0.05)
    svc, _, _ = make(dane=dane)
    results = await asyncio.gather(*(svc.reply_for(b"postfix example.test") for _ in range(20)))
    assert len(set(results)) == 1
    assert dane.calls == 1


async def test_slow_evidence_gives_temp_within_budget() -> None:
    dane = FakeDane(delay=5.0)
    svc, _, _ = make(dane=dane, budget=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = reply(await svc.reply_for(b"postfix slow.test"))
    assert got.startswith(b"TEMP lookup did not complete")
    assert loop.time() - t0 < 1.0


async def test_dns_failure_is_temp_and_briefly_cached() -> None:
    failed = DnsEvidence(DnsStatus.FAILED, error="MX lookup for broken.test: SERVFAIL")
    svc, clock, _ = make(dane=FakeDane({"broken.test": failed}))
    assert reply(await svc.reply_for(b"postfix broken.test")).startswith(b"TEMP MX lookup")
    clock.mono += 6
    assert svc.cached_reply(b"postfix broken.test") is None


async def test_decision_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    svc, _, store = make()
    with caplog.at_level(logging.INFO, logger="policyd"):
        await svc.reply_for(b"postfix example.test")
        svc.invalidate(None)
        await svc.reply_for(b"postfix example.test")
    lines = [r.getMessage() for r in caplog.records if "example.test: level=" in r.getMessage()]
    assert lines == ["example.test: level=NOTFOUND reason=no DANE, MTA-STS or probe evidence"]
    await asyncio.sleep(0)
    assert len(store.event_log) == 1


async def test_probe_wanted_for_domains_with_hosts() -> None:
    probe = FakeProbe()
    svc, _, _ = make(probe=probe)
    await svc.reply_for(b"postfix example.test")
    assert probe.wanted == ["example.test"]


async def test_flush_forgets() -> None:
    svc, _, store = make()
    await svc.reply_for(b"postfix example.test")
    await svc.flush("example.test")
    assert svc.cached_reply(b"postfix example.test") is None
    await svc.flush(None)
    assert store.records == {}
