"""PolicyService with fake sources: caching, coalescing, overrides, TEMP bounds, logging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from policyd import service as service_module
from policyd.adapters.store import Kind, Record
from policyd.codec import netstring
from policyd.codec.destination import parse_key
from policyd.codec.postfix_policy import parse, render
from policyd.codec.socketmap import MAX_REPLY
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
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.core.types import Outcome, Policy, Rule, TlsLevel
from policyd.service import PolicyService
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, reply
from tests.fakes import ServiceClock as Clock

NOW = 1_800_000_000.0


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
    # strict leaves the Postfix 3.10 attributes off: older Postfix defers on them.
    assert reply(await svc.reply_for(b"strict example.test")) == got


async def test_sts_attributes_profile_logs_one_word_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx.example.test",), 86400, "1", NOW - 10)
    svc, _, _ = make(sts=FakeSts({"example.test": StsEvidence(pol)}))
    svc.set_profiles((*DEFAULT_PROFILES, Profile("tlsrpt", sts_attributes=True)))
    caplog.set_level(logging.INFO, "policyd")
    got = reply(await svc.reply_for(b"tlsrpt example.test"))
    assert got.endswith(
        b"{ policy_string = mx: mx.example.test } { policy_string = max_age: 86400 }"
    )
    [line] = [m for m in caplog.messages if m.startswith("example.test: ")]
    assert line.startswith(
        "example.test: level=secure,match=mx.example.test,servername=hostname,policy_type=sts,"
        "policy_domain=example.test,mx_host_pattern=mx.example.test profile=tlsrpt reason="
    )


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


async def test_policy_longer_than_a_reply_is_temp_never_cut() -> None:
    """Security review H2: a policy that does not fit one socketmap reply (100,000 bytes)
    is answered TEMP, logged and explained as TEMP, never sent truncated."""
    names = tuple(f"mx{i:05d}.example.test" for i in range(5000))
    huge = Policy(TlsLevel.SECURE, names)
    assert len(render(huge)) > MAX_REPLY
    svc, _, _ = make()
    await svc.set_override(Override("example.test", huge))
    got = reply(await svc.reply_for(b"postfix example.test"))
    assert got.startswith(b"TEMP policy not sent: reply of ")
    assert b"exceeds the socketmap limit of 100000" in got
    assert svc.stats.temp == 1
    [(_, verdict, _), *_] = await svc.explain(parse_key("example.test"))
    assert verdict.outcome is Outcome.TEMP
    assert verdict.rule is Rule.OVERRIDE


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
    assert store.event_log == []  # written off the answer's path, in batches
    await svc.writes.flush()
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


# -- kept answers through a resolver outage ---------------------------------------------------


class Outage:
    def __init__(self) -> None:
        self.down = False

    def __call__(self) -> bool:
        return self.down


BROKEN = DnsEvidence(DnsStatus.FAILED, error="MX lookup for example.test: resolver not answering")


def outage_service(
    store: MemoryStore | None = None,
) -> tuple[PolicyService, Clock, MemoryStore, FakeDane, Outage]:
    clock = Clock()
    store = store or MemoryStore()
    dane = FakeDane()
    outage = Outage()
    probe = FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)})
    svc = PolicyService(
        DEFAULT_PROFILES,
        store,
        dane,
        FakeSts(),
        probe,
        lookup_budget=1.0,
        clock=clock.wall,
        monotonic=clock.monotonic,
        dns_down=outage,
    )
    return svc, clock, store, dane, outage


async def test_known_destination_keeps_its_answer_through_an_outage() -> None:
    svc, clock, _, dane, outage = outage_service()
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    dane.answers["example.test"] = BROKEN
    outage.down = True
    svc.invalidate(None)
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    # kept answers are cached briefly only: the outage may end any moment
    clock.mono += 6
    assert svc.cached_reply(b"postfix example.test") is None
    # a destination never seen has nothing to keep
    dane.answers["new.test"] = BROKEN
    assert reply(await svc.reply_for(b"postfix new.test")).startswith(b"TEMP")
    # the same failure with the resolver answering (not an outage) is TEMP
    outage.down = False
    svc.invalidate(None)
    assert reply(await svc.reply_for(b"postfix example.test")).startswith(b"TEMP")


async def test_kept_answer_comes_from_the_store_after_a_restart() -> None:
    svc, _, store, _, _ = outage_service()
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    await svc.writes.flush()
    restarted, _, _, dane, outage = outage_service(store)
    dane.answers["example.test"] = BROKEN
    outage.down = True
    assert (
        reply(await restarted.reply_for(b"postfix example.test"))
        == b"OK verify servername=hostname"
    )


async def test_fresh_temp_is_not_undone_by_an_outage() -> None:
    # verify, then a bogus answer (TEMP, resolver up), then the resolver dies: TEMP stays,
    # in memory and after a restart.
    svc, _, store, dane, outage = outage_service()
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    dane.answers["example.test"] = DnsEvidence(DnsStatus.FAILED, error="bogus")
    svc.invalidate(None)
    assert reply(await svc.reply_for(b"postfix example.test")).startswith(b"TEMP")
    await svc.writes.flush()
    outage.down = True
    svc.invalidate(None)
    assert reply(await svc.reply_for(b"postfix example.test")).startswith(b"TEMP")
    restarted, _, _, dane2, outage2 = outage_service(store)
    dane2.answers["example.test"] = BROKEN
    outage2.down = True
    assert reply(await restarted.reply_for(b"postfix example.test")).startswith(b"TEMP")


async def test_kept_answers_expire() -> None:
    svc, _, store, _, _ = outage_service()
    assert reply(await svc.reply_for(b"postfix example.test")) == b"OK verify servername=hostname"
    await svc.writes.flush()
    restarted, clock2, _, dane, outage = outage_service(store)
    clock2.now += service_module.KEEP_ANSWERS_FOR + 1
    dane.answers["example.test"] = BROKEN
    outage.down = True
    assert reply(await restarted.reply_for(b"postfix example.test")).startswith(b"TEMP")


def test_kept_answers_round_trip() -> None:
    from policyd.core.types import Outcome, Rule, Verdict

    kept = {
        "postfix": Verdict(Outcome.POLICY, Rule.DANE, "r", parse("dane-only")),
        "strict": Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "nothing"),
    }
    assert service_module.answers_from_json(service_module.answers_to_json(kept)) == kept
    with pytest.raises(ValueError):
        service_module.answers_from_json("[]")


# -- a bound on destinations in memory, least recently used evicted ---------------------------


def capped(cap: int) -> tuple[PolicyService, FakeDane]:
    dane = FakeDane()
    svc = PolicyService(
        DEFAULT_PROFILES,
        MemoryStore(),
        dane,
        FakeSts(),
        FakeProbe(),
        lookup_budget=1.0,
        max_destinations=cap,
    )
    return svc, dane


async def test_destinations_in_memory_are_capped_lru() -> None:
    svc, dane = capped(3)
    for name in ("a", "b", "c"):
        await svc.reply_for(f"postfix {name}.test".encode())
    assert svc.cached_reply(b"postfix a.test") is not None  # a is now the most recent
    await svc.reply_for(b"postfix d.test")  # evicts b, the least recently used
    assert svc.cached_reply(b"postfix b.test") is None
    for name in ("a", "c", "d"):
        assert svc.cached_reply(f"postfix {name}.test".encode()) is not None
    assert svc.evicted == 1
    assert len(svc.remembered()) == 3
    assert ("postfix", "b.test") not in svc.remembered()
    # an evicted destination comes back from the slow path, with fresh evidence
    calls = dane.calls
    assert reply(await svc.reply_for(b"postfix b.test")) == b"NOTFOUND "
    assert dane.calls == calls + 1


async def test_payloads_per_destination_are_bounded() -> None:
    svc, _ = capped(10)
    spellings = [f"postfix {'Example.Test'[:i].upper()}{'example.test'[i:]}" for i in range(12)]
    for text in spellings:
        await svc.reply_for(text.encode())
    assert svc.cached_answers <= service_module.MAX_PAYLOADS_PER_DESTINATION


async def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        capped(0)
