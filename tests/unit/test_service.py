"""PolicyService with fake sources: answers as values, how long they hold, coalescing,
overrides, TEMP bounds, logging, kept answers, the bound on destinations. (What Postfix is
sent, and the cache of it, is tested in server/test_reply_cache.py and server/test_socketmap.py.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from policyd.adapters.store import Kind, Record
from policyd.codec.destination import parse_key
from policyd.codec.postfix_policy import parse, render
from policyd.codec.socketmap import MAX_REPLY
from policyd.core.evidence import (
    DnsEvidence,
    DnsStatus,
    MxKind,
    Override,
    ProbeLevel,
    ProbeState,
    StsEvidence,
    StsMode,
    StsPolicy,
)
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict
from policyd.kept_answers import KEEP_ANSWERS_FOR, answers_from_json, answers_to_json
from policyd.service import TEMP_ANSWER_TTL, Answer, PolicyService
from policyd.settings import DEFAULT_MAX_DESTINATIONS
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, RecordingCache, plain_dns
from tests.fakes import ServiceClock as Clock

NOW = 1_800_000_000.0


def make(
    dane: FakeDane | None = None,
    sts: FakeSts | None = None,
    probe: FakeProbe | None = None,
    budget: float = 1.0,
    cap: int = DEFAULT_MAX_DESTINATIONS,
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
        max_destinations=cap,
    )
    return svc, clock, store


async def ask(svc: PolicyService, key: str, profile: str = "postfix") -> Answer:
    found = svc.profile(profile)
    assert found is not None
    return await svc.answer(parse_key(key), found)


def policy_of(answer: Answer) -> str:
    """The policy answered, in Postfix syntax (what follows ``OK`` in the reply)."""
    assert answer.verdict.outcome is Outcome.POLICY
    assert answer.verdict.policy is not None
    return render(answer.verdict.policy)


def temp_reason(answer: Answer) -> str:
    assert answer.verdict.outcome is Outcome.TEMP
    return answer.verdict.reason


async def test_answer_holds_until_its_evidence_expires() -> None:
    dane = FakeDane()
    svc, _, _ = make(dane=dane)
    got = await ask(svc, "example.test")
    assert got.verdict.outcome is Outcome.NOTFOUND
    assert got.ttl == 300.0  # the DNS evidence's TTL (tests.fakes.plain_dns)
    assert not got.kept
    assert dane.calls == 1


async def test_sts_enforce_and_profiles() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx.example.test",), 86400, "1", NOW - 10)
    svc, _, _ = make(sts=FakeSts({"example.test": StsEvidence(pol)}))
    got = policy_of(await ask(svc, "example.test"))
    assert got == "secure match=mx.example.test servername=hostname"
    # strict leaves the Postfix 3.10 attributes off: older Postfix defers on them.
    assert policy_of(await ask(svc, "example.test", "strict")) == got


async def test_sts_for_a_smart_host_on_port_25() -> None:
    """Review D8 (RFC 8461 3.4): a bracketed next hop on port 25 takes the policy of its own
    name, unless the profile turns sts_smart_host off; other ports never do."""
    pol = StsPolicy(StsMode.ENFORCE, ("smtp.relay.test",), 86400, "1", NOW - 10)
    svc, _, _ = make(sts=FakeSts({"smtp.relay.test": StsEvidence(pol)}))
    svc.set_profiles((*DEFAULT_PROFILES, Profile("nosmart", sts_smart_host=False)))
    got = await ask(svc, "[smtp.relay.test]")
    assert policy_of(got) == "secure match=smtp.relay.test servername=hostname"
    assert got.verdict.rule is Rule.MTA_STS
    assert policy_of(await ask(svc, "[smtp.relay.test]", "strict")) == policy_of(got)
    assert (await ask(svc, "[smtp.relay.test]", "nosmart")).verdict.rule is not Rule.MTA_STS
    assert (await ask(svc, "[smtp.relay.test]:587")).verdict.rule is not Rule.MTA_STS


async def test_sts_attributes_profile_logs_one_word_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx.example.test",), 86400, "1", NOW - 10)
    svc, _, _ = make(sts=FakeSts({"example.test": StsEvidence(pol)}))
    svc.set_profiles((*DEFAULT_PROFILES, Profile("tlsrpt", sts_attributes=True)))
    caplog.set_level(logging.INFO, "policyd")
    got = policy_of(await ask(svc, "example.test", "tlsrpt"))
    assert got.endswith(
        "{ policy_string = mx: mx.example.test } { policy_string = max_age: 86400 }"
    )
    [line] = [m for m in caplog.messages if m.startswith("example.test: ")]
    assert line.startswith(
        "example.test: level=secure,match=mx.example.test,servername=hostname,policy_type=sts,"
        "policy_domain=example.test,mx_host_pattern=mx.example.test profile=tlsrpt reason="
    )


async def test_profiles_by_map_name() -> None:
    svc, _, _ = make()
    assert svc.profile("postfix") is not None
    assert svc.profile("nosuch") is None
    svc.set_profiles((Profile("only"),))
    assert svc.profile("postfix") is None
    assert [p.name for p in svc.profiles] == ["only"]


async def test_override_wins_and_invalidates_cache() -> None:
    svc, _, _ = make(probe=FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)}))
    cache = RecordingCache()
    svc.subscribe(cache)
    assert policy_of(await ask(svc, "example.test")) == "verify servername=hostname"
    await svc.set_override(Override("example.test", parse("encrypt"), author="root"))
    assert cache.invalidated == ["example.test"]
    assert policy_of(await ask(svc, "example.test")) == "encrypt"
    assert await svc.delete_override("example.test")
    assert cache.invalidated == ["example.test", "example.test"]
    assert policy_of(await ask(svc, "example.test")) == "verify servername=hostname"


async def test_parent_override_beats_a_subdomains_own_evidence() -> None:
    """Review D14: ``.example.test`` reaches ``sub.example.test`` (any depth) although
    the probe gave the subdomain an answer; not ``example.test`` itself. Every held answer under
    the parent form goes stale when the override is set or deleted."""
    verify = ProbeState(ProbeLevel.VERIFY)
    probe = FakeProbe({k: verify for k in ("sub.example.test", "example.test")})
    svc, _, _ = make(probe=probe)
    cache = RecordingCache()
    svc.subscribe(cache)
    before = policy_of(await ask(svc, "sub.example.test"))
    assert before == "verify servername=hostname"
    await ask(svc, "a.b.example.test")
    await ask(svc, "example.test")
    await ask(svc, "[mx.example.test]")
    await svc.set_override(Override(".example.test", parse("encrypt"), author="root"))
    assert sorted(k for k in cache.invalidated if k) == [
        ".example.test",
        "a.b.example.test",
        "sub.example.test",
    ]
    got = await ask(svc, "sub.example.test")
    assert policy_of(got) == "encrypt"
    assert got.verdict.reason == "override of .example.test by root"
    assert policy_of(await ask(svc, "a.b.example.test")) == "encrypt"
    assert policy_of(await ask(svc, "example.test")) == before  # not under .example.test
    [(_, verdict, evidence), *_] = await svc.explain(parse_key("sub.example.test"))
    assert verdict.reason == "override of .example.test by root"
    assert evidence.override is not None and evidence.override.key == ".example.test"
    cache.invalidated.clear()
    assert await svc.delete_override(".example.test")
    assert "sub.example.test" in cache.invalidated
    assert policy_of(await ask(svc, "sub.example.test")) == before


async def test_expiring_parent_override_drops_subdomain_answers() -> None:
    svc, clock, _ = make()
    cache = RecordingCache()
    svc.subscribe(cache)
    await svc.set_override(Override(".example.test", parse("may"), expires_at=NOW + 60))
    assert policy_of(await ask(svc, "sub.example.test")) == "may"
    clock.advance(61)
    cache.invalidated.clear()
    svc.expire_overrides()
    assert sorted(k for k in cache.invalidated if k) == [".example.test", "sub.example.test"]


async def test_policy_longer_than_a_reply_is_temp_never_cut() -> None:
    """Security review H2: a policy that does not fit one socketmap reply (100,000 bytes)
    is answered TEMP, logged and explained as TEMP, never sent truncated."""
    names = tuple(f"mx{i:05d}.example.test" for i in range(5000))
    huge = Policy(TlsLevel.SECURE, names)
    assert len(render(huge)) > MAX_REPLY
    svc, _, _ = make()
    await svc.set_override(Override("example.test", huge))
    got = temp_reason(await ask(svc, "example.test"))
    assert got.startswith("policy not sent: reply of ")
    assert "exceeds the socketmap limit of 100000" in got
    assert svc.stats.temp == 1
    [(_, verdict, _), *_] = await svc.explain(parse_key("example.test"))
    assert verdict.outcome is Outcome.TEMP
    assert verdict.rule is Rule.OVERRIDE


async def test_expired_override_no_longer_applies() -> None:
    svc, clock, _ = make()
    await svc.set_override(Override("example.test", parse("encrypt"), expires_at=NOW + 60))
    got = await ask(svc, "example.test")
    assert policy_of(got) == "encrypt"
    assert got.ttl == 60.0  # held no longer than the override lasts
    clock.advance(61)
    assert (await ask(svc, "example.test")).verdict.outcome is Outcome.NOTFOUND


async def test_expire_overrides_drops_them_and_their_answers() -> None:
    svc, clock, _ = make()
    cache = RecordingCache()
    svc.subscribe(cache)
    await svc.set_override(Override("a.test", parse("encrypt"), expires_at=NOW + 60))
    await svc.set_override(Override("b.test", parse("encrypt")))
    clock.advance(61)
    cache.invalidated.clear()
    svc.expire_overrides()
    assert set(svc.overrides) == {"b.test"}
    assert cache.invalidated == ["a.test"]


async def test_overrides_survive_reload_from_store() -> None:
    svc, _, store = make()
    await svc.set_override(Override("example.test", parse("secure match=.example.test")))
    fresh = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    await fresh.load_overrides()
    assert policy_of(await ask(fresh, "example.test")) == "secure match=.example.test"


async def test_reload_override_invalidates_only_a_change() -> None:
    svc, _, store = make()
    cache = RecordingCache()
    svc.subscribe(cache)
    await svc.reload_override("example.test")  # none here, none in the store
    assert cache.invalidated == []
    doc = '{"policy": "encrypt"}'
    await store.put(Record(Kind.OVERRIDE, "example.test", doc, None))  # a fleet member's
    await svc.reload_override("example.test")
    assert cache.invalidated == ["example.test"]
    assert policy_of(await ask(svc, "example.test")) == "encrypt"
    await svc.reload_override("example.test")  # unchanged
    assert cache.invalidated == ["example.test"]
    await store.delete(Kind.OVERRIDE, "example.test")
    await svc.reload_override("example.test")
    assert "example.test" not in svc.overrides
    assert cache.invalidated == ["example.test", "example.test"]


async def test_newline_in_an_override_comment_never_makes_temp() -> None:
    # A stored comment with a newline (written by hand or by an older policyd) made every
    # lookup of the key TEMP: Verdict refused the two-line reason.
    svc, _, store = make()
    doc = '{"policy": "encrypt", "comment": "ticket 1\\nsecond line", "author": "root"}'
    await store.put(Record(Kind.OVERRIDE, "example.test", doc, None))
    await svc.load_overrides()
    assert policy_of(await ask(svc, "example.test")) == "encrypt"
    ov = svc.overrides["example.test"]
    assert ov.comment == "ticket 1\\nsecond line"  # escaped on load, one line
    # The core escapes rather than refuses even an unescaped one.
    await svc.set_override(Override("example.test", parse("verify"), comment="a\nb"))
    assert policy_of(await ask(svc, "example.test")) == "verify"


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
    assert (await ask(svc, "inject.test")).verdict.outcome is Outcome.NOTFOUND


async def test_concurrent_lookups_share_one_gathering() -> None:
    gate = asyncio.Event()
    dane = FakeDane(gate=gate)
    svc, _, _ = make(dane=dane)
    lookups = [asyncio.ensure_future(ask(svc, "example.test")) for _ in range(20)]
    for _ in range(10):  # turns of the loop, no time: each lookup reaches the gathering
        await asyncio.sleep(0)
    assert dane.calls == 1
    assert not any(lookup.done() for lookup in lookups)
    gate.set()
    results = await asyncio.gather(*lookups)
    assert len({a.verdict for a in results}) == 1
    assert dane.calls == 1


async def test_slow_evidence_gives_temp_within_budget() -> None:
    gate = asyncio.Event()  # not open before the budget runs out: no evidence in time
    svc, _, _ = make(dane=FakeDane(gate=gate), budget=0.0)
    got = await ask(svc, "slow.test")
    assert temp_reason(got).startswith("lookup did not complete")
    assert got.verdict.rule is Rule.DNS_FAILURE
    assert got.ttl == TEMP_ANSWER_TTL
    gate.set()  # the gathering, shielded from the timeout, still ends


@pytest.mark.parametrize("budget", [0.05, 0.0])
async def test_a_cancelled_caller_is_cancelled_not_answered(budget: float) -> None:
    """The caller gone (a closed Postfix connection) ends its lookup with CancelledError,
    before the budget runs out or as it does; the budget's timer does not outlive it."""
    gate = asyncio.Event()
    svc, _, _ = make(dane=FakeDane(gate=gate), budget=budget)
    lookup = asyncio.ensure_future(ask(svc, "slow.test"))
    if budget:
        await asyncio.sleep(0.01)  # gathering, inside the budget
    else:
        await asyncio.sleep(0)  # the budget's timer is due, not yet run
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup
    await asyncio.sleep(budget + 0.02)
    gate.set()
    still = Outcome.NOTFOUND if budget else Outcome.TEMP  # a budget of 0 s: always TEMP
    assert (await ask(svc, "slow.test")).verdict.outcome is still


async def test_dns_failure_is_temp_and_held_briefly() -> None:
    failed = DnsEvidence(DnsStatus.FAILED, error="MX lookup for broken.test: SERVFAIL")
    svc, _, _ = make(dane=FakeDane({"broken.test": failed}))
    got = await ask(svc, "broken.test")
    assert temp_reason(got).startswith("MX lookup")
    assert got.ttl == TEMP_ANSWER_TTL


async def test_decision_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    svc, _, store = make()
    with caplog.at_level(logging.INFO, logger="policyd"):
        await ask(svc, "example.test")
        await ask(svc, "example.test")
    lines = [r.getMessage() for r in caplog.records if "example.test: level=" in r.getMessage()]
    assert lines == ["example.test: level=NOTFOUND reason=no DANE, MTA-STS or probe evidence"]
    assert store.event_log == []  # written off the answer's path, in batches
    await svc.writes.flush()
    assert len(store.event_log) == 1


async def test_a_name_first_seen_taking_no_mail_writes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of nonexistent names (NXDOMAIN, null MX) neither fills the store nor pushes
    real level changes out of the event log; the first answer for such a name that takes
    mail is logged and kept as its first."""
    nx = DnsEvidence(DnsStatus.SECURE, MxKind.NXDOMAIN, fetched_at=NOW, expires_at=NOW + 60)
    null = DnsEvidence(DnsStatus.SECURE, MxKind.NULL, fetched_at=NOW, expires_at=NOW + 60)
    dane = FakeDane({"typo.test": nx, "nomail.test": null})
    svc, _, store = make(dane=dane)
    caplog.set_level(logging.INFO, "policyd")
    for key in ("typo.test", "nomail.test"):
        assert (await ask(svc, key)).verdict.rule is Rule.NO_MAIL
    await svc.writes.flush()
    assert store.event_log == []
    assert store.records == {}
    assert not [r for r in caplog.records if "level=" in r.getMessage()]
    dane.answers["typo.test"] = plain_dns("typo.test", NOW)  # registered since
    svc.invalidate("typo.test")
    assert (await ask(svc, "typo.test")).verdict.rule is Rule.DEFAULT
    await svc.writes.flush()
    assert [(e.key, e.previous) for e in store.event_log] == [("typo.test", None)]
    assert [key for _, key in store.records] == ["typo.test"]


async def test_probe_wanted_for_domains_with_hosts() -> None:
    probe = FakeProbe()
    svc, _, _ = make(probe=probe)
    await ask(svc, "example.test")
    assert probe.wanted == ["example.test"]


async def test_flush_forgets() -> None:
    svc, _, store = make()
    cache = RecordingCache(held=1)
    svc.subscribe(cache)
    await ask(svc, "example.test")
    assert svc.cached_answers == 1  # as the subscribed cache counts them
    await svc.flush("example.test")
    assert cache.invalidated == ["example.test"]
    assert ("postfix", "example.test") in svc.remembered()
    await svc.flush(None)
    assert cache.invalidated == ["example.test", None]
    assert svc.remembered() == {}
    assert svc.cached_destinations == 0
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
        dns_down=outage,
    )
    return svc, clock, store, dane, outage


VERIFY = "verify servername=hostname"


def restarted_in_outage(store: MemoryStore, later: float = 0.0) -> PolicyService:
    """A service started again on ``store`` (``later`` seconds on), the resolver down."""
    restarted, clock, _, dane, outage = outage_service(store)
    clock.now += later
    dane.answers["example.test"] = BROKEN
    outage.down = True
    return restarted


async def test_known_destination_keeps_its_answer_through_an_outage() -> None:
    svc, _, _, dane, outage = outage_service()
    assert policy_of(await ask(svc, "example.test")) == VERIFY
    dane.answers["example.test"] = BROKEN
    outage.down = True
    got = await ask(svc, "example.test")
    assert policy_of(got) == VERIFY
    assert got.kept
    # kept answers hold briefly only: the outage may end any moment
    assert got.ttl == TEMP_ANSWER_TTL
    # a destination never seen has nothing to keep
    dane.answers["new.test"] = BROKEN
    assert temp_reason(await ask(svc, "new.test"))
    # the same failure with the resolver answering (not an outage) is TEMP
    outage.down = False
    assert temp_reason(await ask(svc, "example.test"))


async def test_kept_answer_comes_from_the_store_after_a_restart() -> None:
    svc, _, store, _, _ = outage_service()
    assert policy_of(await ask(svc, "example.test")) == VERIFY
    await svc.writes.flush()
    assert policy_of(await ask(restarted_in_outage(store), "example.test")) == VERIFY


async def test_fresh_temp_is_not_undone_by_an_outage() -> None:
    # verify, then a bogus answer (TEMP, resolver up), then the resolver dies: TEMP stays,
    # in memory and after a restart.
    svc, _, store, dane, outage = outage_service()
    assert policy_of(await ask(svc, "example.test")) == VERIFY
    dane.answers["example.test"] = DnsEvidence(DnsStatus.FAILED, error="bogus")
    assert temp_reason(await ask(svc, "example.test"))
    await svc.writes.flush()
    outage.down = True
    assert temp_reason(await ask(svc, "example.test"))
    assert temp_reason(await ask(restarted_in_outage(store), "example.test"))


async def test_a_deleted_override_is_not_kept_through_an_outage() -> None:
    # The override answered "may" (weaker than the evidence's verify); deleted while the
    # resolver is down, it must not live on as a kept answer: TEMP, in memory and after a
    # restart, until evidence decides again.
    svc, _, store, dane, outage = outage_service()
    await svc.set_override(Override("example.test", parse("may"), author="root"))
    assert policy_of(await ask(svc, "example.test")) == "may"
    await svc.writes.flush()
    dane.answers["example.test"] = BROKEN
    outage.down = True
    assert await svc.delete_override("example.test")
    assert temp_reason(await ask(svc, "example.test"))
    assert temp_reason(await ask(restarted_in_outage(store), "example.test"))


async def test_kept_answers_expire() -> None:
    svc, _, store, _, _ = outage_service()
    assert policy_of(await ask(svc, "example.test")) == VERIFY
    await svc.writes.flush()
    restarted = restarted_in_outage(store, later=KEEP_ANSWERS_FOR + 1)
    assert temp_reason(await ask(restarted, "example.test"))


def test_kept_answers_round_trip() -> None:
    kept = {
        "postfix": Verdict(Outcome.POLICY, Rule.DANE, "r", parse("dane-only")),
        "strict": Verdict(Outcome.NOTFOUND, Rule.DEFAULT, "nothing"),
    }
    assert answers_from_json(answers_to_json(kept)) == kept
    with pytest.raises(ValueError):
        answers_from_json("[]")


# -- a bound on destinations in memory, least recently used evicted ---------------------------


async def test_latest_verdicts_are_capped_lru() -> None:
    svc, _, _ = make(cap=2)
    cache = RecordingCache()
    svc.subscribe(cache)
    for name in ("a", "b", "c"):
        await ask(svc, f"{name}.test")
    assert svc.evicted == 1
    assert cache.invalidated == ["a.test"]  # told before its replies are forgotten
    assert set(svc.remembered()) == {("postfix", "b.test"), ("postfix", "c.test")}
    assert svc.cached_destinations == 2


async def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make(cap=0)
