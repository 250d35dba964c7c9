"""policyd.core: evidence validation, DANE rules, MTA-STS matching and probe damping."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec.postfix_policy import render
from policyd.core import dane, probe, sts
from policyd.core.decide import decide
from policyd.core.evidence import (
    Destination,
    DestinationForm,
    DnsEvidence,
    DnsStatus,
    Evidence,
    MxHost,
    MxKind,
    Override,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
    StsMode,
    StsPolicy,
    Tlsa,
)
from policyd.core.profile import DEFAULT_PROFILES, Fallback, Profile
from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict, notfound, policy, temp
from tests.tlsa_der import CERT_DER, SPKI_DER

S, INS, F = DnsStatus.SECURE, DnsStatus.INSECURE, DnsStatus.FAILED
HOUR = 3600.0

# --- types and evidence ---------------------------------------------------------------


def test_level_strength_order() -> None:
    order = [TlsLevel.NONE, TlsLevel.MAY, TlsLevel.ENCRYPT, TlsLevel.DANE, TlsLevel.VERIFY]
    strengths = [lvl.strength for lvl in order]
    assert strengths == sorted(strengths) and len(set(strengths)) == len(strengths)
    assert TlsLevel.SECURE.strength == TlsLevel.VERIFY.strength == TlsLevel.FINGERPRINT.strength
    assert TlsLevel.DANE_ONLY.strength > TlsLevel.SECURE.strength
    assert {lvl for lvl in TlsLevel if lvl.takes_match} == {
        TlsLevel.FINGERPRINT,
        TlsLevel.VERIFY,
        TlsLevel.SECURE,
    }


def test_verdict_strength_order() -> None:
    nf = notfound(Rule.DEFAULT, "x")
    tmp = temp(Rule.DNS_FAILURE, "x")
    pols = [policy(Rule.DANE, "x", Policy(lvl)) for lvl in TlsLevel]
    assert all(nf.strength < p.strength < tmp.strength for p in pols)


@pytest.mark.parametrize(
    ("outcome", "pol", "reason"),
    [
        (Outcome.POLICY, None, "r"),
        (Outcome.NOTFOUND, Policy(TlsLevel.MAY), "r"),
        (Outcome.TEMP, Policy(TlsLevel.MAY), "r"),
    ],
)
def test_verdict_validates(outcome: Outcome, pol: Policy | None, reason: str) -> None:
    with pytest.raises(ValueError):
        Verdict(outcome, Rule.DEFAULT, reason, pol)


@pytest.mark.parametrize(
    ("reason", "escaped"),
    [
        ("two\nlines", "two\\nlines"),
        ("cr\r", "cr\\r"),
        ("nul\0 esc\x1b", "nul\\x00 esc\\x1b"),
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_verdict_reason_is_one_line_escaped_never_refused(reason: str, escaped: str) -> None:
    # Refusing would make the lookup TEMP (a newline in an override comment did).
    assert Verdict(Outcome.NOTFOUND, Rule.DEFAULT, reason).reason == escaped


@pytest.mark.parametrize(
    ("rec", "usable"),
    [
        (Tlsa(3, 1, 1, b"\0" * 32), True),
        (Tlsa(3, 0, 1, b"\0" * 32), True),
        (Tlsa(2, 0, 2, b"\0" * 64), True),
        (Tlsa(2, 1, 0, SPKI_DER), True),
        (Tlsa(3, 0, 0, CERT_DER), True),
        (Tlsa(2, 1, 0, b"\x30\x01"), False),  # not a SubjectPublicKeyInfo (RFC review D11)
        (Tlsa(3, 0, 0, SPKI_DER), False),  # selector 0 wants a certificate
        (Tlsa(3, 1, 0, SPKI_DER + b"\0"), False),  # trailing bytes: OpenSSL refuses
        (Tlsa(3, 0, 0, CERT_DER[:-1]), False),
        # A well-formed SPKI of a key type cryptography does not know (OID 1.2.3.4):
        # benefit of the doubt, OpenSSL may know it.
        (Tlsa(3, 1, 0, bytes.fromhex("300c3005 06032a0304 0303000102".replace(" ", ""))), True),
        (Tlsa(3, 1, 0, b""), False),
        (Tlsa(3, 1, 1, b"\0" * 31), False),
        (Tlsa(3, 1, 1, b"\0" * 33), False),
        (Tlsa(3, 1, 2, b"\0" * 32), False),
        (Tlsa(3, 1, 3, b"\0" * 32), False),
        (Tlsa(3, 2, 1, b"\0" * 32), False),
        (Tlsa(0, 1, 1, b"\0" * 32), False),
        (Tlsa(1, 1, 1, b"\0" * 32), False),
        (Tlsa(4, 1, 1, b"\0" * 32), False),
        (Tlsa(255, 255, 255, b"\0"), False),
    ],
)
def test_tlsa_usable(rec: Tlsa, usable: bool) -> None:
    assert rec.usable is usable


@pytest.mark.parametrize("field", ["usage", "selector", "mtype"])
@pytest.mark.parametrize("value", [-1, 256])
def test_tlsa_range(field: str, value: int) -> None:
    args = {"usage": 3, "selector": 1, "mtype": 1, "data": b"\0" * 32, field: value}
    with pytest.raises(ValueError):
        Tlsa(**args)  # type: ignore[arg-type]


def test_sts_policy_validation_and_expiry() -> None:
    with pytest.raises(ValueError):
        StsPolicy(StsMode.ENFORCE, (), 86400, "id", 0.0)
    with pytest.raises(ValueError):
        StsPolicy(StsMode.TESTING, ("mx",), -1, "id", 0.0)
    StsPolicy(StsMode.NONE, (), 0, "id", 0.0)  # mode none needs no mx
    pol = StsPolicy(StsMode.ENFORCE, ("mx",), 100, "id", 1000.0)
    assert pol.expires_at == 1100.0
    assert pol.valid_at(1099.9) and not pol.valid_at(1100.0)


def test_override_active() -> None:
    assert Override("k", None).active_at(1e12)
    ov = Override("k", None, expires_at=10.0)
    assert ov.active_at(9.9) and not ov.active_at(10.0)


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        ("554 \x1b]52;c;cHduZWQ=\x07 go away", "554 \\x1b]52;c;cHduZWQ=\\x07 go away"),
        ("421 busy\r\nline two", "421 busy\\r\\nline two"),
        ("certificate verify failed: self-signed", "certificate verify failed: self-signed"),
        ("already \\x1b escaped", "already \\x1b escaped"),
    ],
)
def test_probe_detail_from_remote_servers_is_escaped(detail: str, shown: str) -> None:
    """Security review L3: remote SMTP reply text (an OSC 52 clipboard write, a line
    break) reaches policyctl explain and the log as text, never as control characters."""
    h = ProbeHost("mx.example.com", "192.0.2.1", ProbeVerdict.NO_STARTTLS, detail)
    assert h.detail == shown
    assert h.detail.isprintable()
    again = ProbeHost("mx.example.com", "192.0.2.1", ProbeVerdict.NO_STARTTLS, h.detail)
    assert again.detail == h.detail  # idempotent: stored records round-trip


def test_probe_verdict_properties() -> None:
    assert [v for v in ProbeVerdict if not v.reachable] == [ProbeVerdict.UNREACHABLE]
    assert {v for v in ProbeVerdict if not v.encrypted} == {
        ProbeVerdict.NO_STARTTLS,
        ProbeVerdict.TLS_INTOLERANT,
        ProbeVerdict.UNREACHABLE,
    }
    assert ProbeLevel.VERIFY.strength > ProbeLevel.ENCRYPT.strength > ProbeLevel.MAY.strength


@pytest.mark.parametrize(
    ("dest", "key", "is_address"),
    [
        (Destination("example.com"), "example.com", False),
        (Destination("example.com", 587), "example.com:587", False),
        (Destination("mx.example.com", form=DestinationForm.HOST), "[mx.example.com]", False),
        (Destination("mx.example.com", 26, DestinationForm.HOST), "[mx.example.com]:26", False),
        (Destination("example.com", form=DestinationForm.PARENT), ".example.com", False),
        (Destination("192.0.2.1", form=DestinationForm.ADDRESS), "[192.0.2.1]", True),
        (Destination("2001:db8::1", form=DestinationForm.ADDRESS), "[2001:db8::1]", True),
        (Destination("192.0.2.1"), "192.0.2.1", False),
    ],
)
def test_destination_key(dest: Destination, key: str, is_address: bool) -> None:
    assert dest.key == key
    assert dest.is_address is is_address


def test_profiles() -> None:
    names = [p.name for p in DEFAULT_PROFILES]
    assert names == ["postfix", "strict"]
    with pytest.raises(ValueError):
        Profile("")
    with pytest.raises(ValueError):
        Profile("has space")
    with pytest.raises(ValueError):
        Profile("x", probe_no_tls=Fallback.ENCRYPT)
    Profile("a-b_c.d1")


# --- DANE -----------------------------------------------------------------------------

USABLE = (Tlsa(3, 1, 1, b"\0" * 32),)
UNUSABLE = (Tlsa(0, 1, 1, b"\0" * 32),)


def mx(
    name: str, address: DnsStatus = S, tlsa: DnsStatus | None = S, recs: tuple[Tlsa, ...] = USABLE
) -> MxHost:
    return MxHost(name, 10, address, tlsa=tlsa, tlsa_records=recs if tlsa is S else ())


@pytest.mark.parametrize(
    ("ev", "kind"),
    [
        (DnsEvidence(F, error="x"), dane.DaneKind.TEMP),
        (DnsEvidence(F, MxKind.NXDOMAIN), dane.DaneKind.TEMP),
        (DnsEvidence(S, MxKind.NXDOMAIN), dane.DaneKind.NO_MAIL),
        (DnsEvidence(INS, MxKind.NXDOMAIN), dane.DaneKind.NO_MAIL),
        (DnsEvidence(S, MxKind.NULL), dane.DaneKind.NO_MAIL),
        (DnsEvidence(S), dane.DaneKind.NOT_APPLICABLE),
        (DnsEvidence(S, hosts=(mx("a"),)), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(S, MxKind.IMPLICIT, (mx("a"),)), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(INS, hosts=(mx("a"),)), dane.DaneKind.DANE),
        (DnsEvidence(S, hosts=(mx("a"), mx("b", INS))), dane.DaneKind.DANE),
        (DnsEvidence(S, hosts=(mx("a"), mx("b", S, INS))), dane.DaneKind.DANE),
        # b: signed denial of any address (no addresses, no TLSA looked up): Postfix
        # skips it, so it does not stand in the way of dane-only (RFC review D17).
        (DnsEvidence(S, hosts=(mx("a"), mx("b", S, None))), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(S, hosts=(mx("a"), mx("b", S, S, ()))), dane.DaneKind.DANE),
        (DnsEvidence(S, hosts=(mx("a", recs=UNUSABLE),)), dane.DaneKind.ENCRYPT),
        (DnsEvidence(INS, hosts=(mx("a", recs=UNUSABLE),)), dane.DaneKind.ENCRYPT),
        (DnsEvidence(S, hosts=(mx("a", recs=UNUSABLE), mx("b", INS))), dane.DaneKind.DANE),
        (DnsEvidence(S, hosts=(mx("a", recs=UNUSABLE + USABLE),)), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(S, hosts=(mx("a"), mx("b", F))), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(S, hosts=(mx("a"), mx("b", S, F))), dane.DaneKind.DANE_ONLY),
        (DnsEvidence(S, hosts=(mx("a", F), mx("b", S, F))), dane.DaneKind.TEMP),
        (DnsEvidence(S, hosts=(mx("a", F), mx("b", INS))), dane.DaneKind.HOSTS_FAILED),
        (DnsEvidence(S, hosts=(mx("a", INS), mx("b", INS))), dane.DaneKind.NOT_APPLICABLE),
        (DnsEvidence(INS, hosts=(mx("a", S, INS),)), dane.DaneKind.NOT_APPLICABLE),
    ],
)
def test_dane_evaluate(ev: DnsEvidence, kind: dane.DaneKind) -> None:
    out = dane.evaluate(ev)
    assert out.kind is kind
    assert out.reason


def test_dane_reason_names_failed_hosts() -> None:
    out = dane.evaluate(
        DnsEvidence(S, hosts=(mx("a"), MxHost("b", 10, F, address_error="SERVFAIL")))
    )
    assert "skipped: address lookup for b failed (SERVFAIL)" in out.reason


# --- MTA-STS --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),
        ("MX.example.com.", "mx.example.com", True),
        ("mx.example.com", "mx2.example.com", False),
        ("mx.example.com", "a.mx.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.Example.com", "MX.example.com.", True),
        ("*.example.com", "a.b.example.com", False),  # one label only (RFC 8461 4.1)
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mxexample.com", False),
        ("*.example.com", "mx.example.org", False),
        ("*.example.com", "*.example.com", True),  # "*" is a label as far as hosts go
        ("example.com", "*.example.com", False),
        ("*example.com", "mx.example.com", False),
    ],
)
def test_mx_matches(pattern: str, host: str, ok: bool) -> None:
    assert sts.mx_matches(pattern, host) is ok


@given(
    st.from_regex(r"\A[a-z0-9-]{1,10}\Z"), st.from_regex(r"\A[a-z0-9-]{1,10}(\.[a-z]{1,5}){1,3}\Z")
)
def test_mx_matches_wildcard_property(label: str, domain: str) -> None:
    assert sts.mx_matches("*." + domain, f"{label}.{domain}")
    assert not sts.mx_matches("*." + domain, f"x.{label}.{domain}")
    assert not sts.mx_matches("*." + domain, domain)


@pytest.mark.parametrize(
    ("pattern", "mapped"),
    [
        ("mx.example.com", "mx.example.com"),
        ("MX.Example.com.", "mx.example.com"),
        ("*.example.com", ".example.com"),
        ("*.Example.COM.", ".example.com"),
    ],
)
def test_postfix_match(pattern: str, mapped: str) -> None:
    assert sts.postfix_match(pattern) == mapped


def test_to_policy_plain() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx1.example.com", "*.example.net"), 86400, "id", 0.0)
    got = sts.to_policy("example.com", pol, with_sts_attributes=False)
    assert got == Policy(
        TlsLevel.SECURE,
        ("mx1.example.com", ".example.net"),
        (("servername", "hostname"),),
    )


def test_to_policy_with_sts_attributes() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("MX1.example.com.", "*.example.net"), 86400, "id", 0.0)
    got = sts.to_policy("example.com", pol, with_sts_attributes=True)
    assert got.level is TlsLevel.SECURE
    assert got.match == ("mx1.example.com", ".example.net")
    assert got.attrs == (
        ("servername", "hostname"),
        ("policy_type", "sts"),
        ("policy_domain", "example.com"),
        ("mx_host_pattern", "mx1.example.com"),
        ("mx_host_pattern", "*.example.net"),
        ("policy_string", "version: STSv1"),
        ("policy_string", "mode: enforce"),
        ("policy_string", "mx: MX1.example.com."),
        ("policy_string", "mx: *.example.net"),
        ("policy_string", "max_age: 86400"),
    )
    # Postfix >= 3.10 reads values with spaces in braces (smtp_tls_policy.c: extpar).
    assert render(got).endswith(
        "mx_host_pattern=*.example.net { policy_string = version: STSv1 }"
        " { policy_string = mode: enforce } { policy_string = mx: MX1.example.com. }"
        " { policy_string = mx: *.example.net } { policy_string = max_age: 86400 }"
    )


def test_to_policy_deduplicates_match() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("*.a.example", "*.A.example.", "b.example"), 1, "id", 0.0)
    got = sts.to_policy("example", pol, with_sts_attributes=False)
    assert got.match == (".a.example", "b.example")


# --- probe: observed level and damping -------------------------------------------------


def ph(verdict: ProbeVerdict, host: str = "mx.example.com") -> ProbeHost:
    return ProbeHost(host, "192.0.2.1", verdict)


V, SS, NT, UR = (
    ProbeVerdict.VALID,
    ProbeVerdict.SELF_SIGNED,
    ProbeVerdict.NO_STARTTLS,
    ProbeVerdict.UNREACHABLE,
)
VERIFY_ROUND = (ph(V, "a"), ph(V, "b"))
ENCRYPT_ROUND = (ph(V, "a"), ph(SS, "b"))
MAY_ROUND = (ph(V, "a"), ph(NT, "b"))
UNREACHABLE_ROUND = (ph(UR, "a"), ph(UR, "b"))


@pytest.mark.parametrize(
    ("hosts", "level"),
    [
        ((), None),
        (UNREACHABLE_ROUND, None),
        (VERIFY_ROUND, ProbeLevel.VERIFY),
        ((ph(V, "a"), ph(UR, "b")), ProbeLevel.VERIFY),
        (ENCRYPT_ROUND, ProbeLevel.ENCRYPT),
        ((ph(ProbeVerdict.EXPIRED),), ProbeLevel.ENCRYPT),
        ((ph(ProbeVerdict.NAME_MISMATCH),), ProbeLevel.ENCRYPT),
        (MAY_ROUND, ProbeLevel.MAY),
        ((ph(ProbeVerdict.TLS_INTOLERANT), ph(UR)), ProbeLevel.MAY),
    ],
)
def test_observed_level(hosts: tuple[ProbeHost, ...], level: ProbeLevel | None) -> None:
    assert probe.observed_level(hosts) is level


def test_verified_names() -> None:
    hosts = (ph(V, "a"), ph(SS, "b"), ph(V, "a"), ph(V, "c"))
    assert probe.verified_names(hosts) == ("a", "c")


def test_damping_validation() -> None:
    with pytest.raises(ValueError):
        probe.Damping(confirm_probes=0)
    with pytest.raises(ValueError):
        probe.Damping(confirm_seconds=-1)


D = probe.Damping(confirm_probes=3, confirm_seconds=6 * HOUR)


def run(
    rounds: Sequence[tuple[float, tuple[ProbeHost, ...]]],
    state: ProbeState | None = None,
    damping: probe.Damping = D,
) -> list[tuple[ProbeState, bool]]:
    out: list[tuple[ProbeState, bool]] = []
    for now, hosts in rounds:
        state, held = probe.advance(state, hosts, now, damping)
        out.append((state, held))
    return out


def test_first_observation_applies() -> None:
    ((state, held),) = run([(0.0, MAY_ROUND)])
    assert state.level is ProbeLevel.MAY and not held
    assert state.probed_at == 0.0 and state.hosts == MAY_ROUND


def test_stronger_level_applies_at_once() -> None:
    res = run([(0.0, MAY_ROUND), (1.0, ENCRYPT_ROUND), (2.0, VERIFY_ROUND)])
    assert [s.level for s, _ in res] == [ProbeLevel.MAY, ProbeLevel.ENCRYPT, ProbeLevel.VERIFY]
    assert not any(h for _, h in res)
    assert res[-1][0].verified_names == ("a", "b")


def test_weaker_level_needs_k_probes_over_t() -> None:
    rounds = [(0.0, VERIFY_ROUND)] + [(i * 3 * HOUR, MAY_ROUND) for i in range(1, 4)]
    res = run(rounds)
    levels = [s.level for s, _ in res]
    # probes at 3h, 6h, 9h: the third one is the K-th and 6h after the first weaker one.
    assert levels == [ProbeLevel.VERIFY, ProbeLevel.VERIFY, ProbeLevel.VERIFY, ProbeLevel.MAY]
    assert [h for _, h in res] == [False, True, True, False]
    held = res[2][0]
    assert held.pending is ProbeLevel.MAY and held.pending_count == 2
    assert held.pending_since == 3 * HOUR
    assert held.verified_names == ("a", "b")  # the names behind the level in force
    final = res[-1][0]
    assert final.pending is None and final.pending_count == 0


def test_weaker_level_k_probes_too_fast_are_held() -> None:
    rounds = [(0.0, VERIFY_ROUND)] + [(float(i), MAY_ROUND) for i in range(1, 10)]
    res = run(rounds)
    assert all(s.level is ProbeLevel.VERIFY for s, _ in res)
    assert res[-1][0].pending_count == 9
    # once the spread is reached, the next weaker probe applies
    ((state, held),) = run([(1.0 + 6 * HOUR, MAY_ROUND)], res[-1][0])
    assert state.level is ProbeLevel.MAY and not held


def test_weaker_level_spread_but_too_few_probes_held() -> None:
    res = run([(0.0, VERIFY_ROUND), (1.0, MAY_ROUND), (100 * HOUR, MAY_ROUND)])
    assert res[-1][0].level is ProbeLevel.VERIFY and res[-1][1]


def test_stronger_observation_resets_the_run() -> None:
    rounds = [
        (0.0, VERIFY_ROUND),
        (1 * HOUR, MAY_ROUND),
        (4 * HOUR, MAY_ROUND),
        (5 * HOUR, VERIFY_ROUND),  # not consecutive any more
        (8 * HOUR, MAY_ROUND),
        (20 * HOUR, MAY_ROUND),
    ]
    res = run(rounds)
    assert res[3][0].pending is None
    assert res[-1][0].level is ProbeLevel.VERIFY
    assert res[-1][0].pending_count == 2 and res[-1][0].pending_since == 8 * HOUR


def test_equal_observation_resets_the_run() -> None:
    res = run([(0.0, ENCRYPT_ROUND), (1.0, MAY_ROUND), (2.0, ENCRYPT_ROUND)])
    assert res[-1][0].level is ProbeLevel.ENCRYPT and res[-1][0].pending is None


def test_least_weak_of_the_run_wins() -> None:
    rounds = [
        (0.0, VERIFY_ROUND),
        (1 * HOUR, MAY_ROUND),
        (4 * HOUR, ENCRYPT_ROUND),
        (7 * HOUR, MAY_ROUND),
    ]
    res = run(rounds)
    assert res[-1][0].level is ProbeLevel.ENCRYPT


def test_unreachable_round_keeps_level() -> None:
    res = run([(0.0, VERIFY_ROUND), (10.0, UNREACHABLE_ROUND)])
    state, held = res[-1]
    assert state.level is ProbeLevel.VERIFY and not held
    assert state.hosts == VERIFY_ROUND and state.verified_names == ("a", "b")
    assert state.probed_at == 10.0


def test_unreachable_round_keeps_pending_run() -> None:
    rounds = [(0.0, VERIFY_ROUND), (1.0, MAY_ROUND), (2.0, UNREACHABLE_ROUND)]
    state, _ = run(rounds)[-1]
    assert state.level is ProbeLevel.VERIFY
    assert state.pending is ProbeLevel.MAY and state.pending_count == 1


def test_unreachable_from_nothing() -> None:
    ((state, held),) = run([(5.0, UNREACHABLE_ROUND)])
    assert state.level is None and not held and state.probed_at == 5.0
    ((state, _),) = run([(6.0, MAY_ROUND)], state)
    assert state.level is ProbeLevel.MAY


def test_k_one_t_zero_applies_at_once() -> None:
    res = run([(0.0, VERIFY_ROUND), (1.0, MAY_ROUND)], damping=probe.Damping(1, 0.0))
    assert res[-1][0].level is ProbeLevel.MAY and not res[-1][1]


_rounds = st.lists(
    st.tuples(
        st.floats(0, 10 * HOUR),
        st.sampled_from([VERIFY_ROUND, ENCRYPT_ROUND, MAY_ROUND, UNREACHABLE_ROUND]),
    ),
    max_size=12,
)


@given(_rounds, st.integers(1, 4), st.floats(0, 12 * HOUR))
def test_damping_never_lowers_without_k_probes_over_t(
    steps: list[tuple[float, tuple[ProbeHost, ...]]], k: int, t: float
) -> None:
    """A level only drops after >= K consecutive weaker probes spread over >= T."""
    damping = probe.Damping(k, t)
    now = 0.0
    state: ProbeState | None = None
    weaker_run: list[float] = []
    for gap, hosts in steps:
        now += gap
        before = state.level if state is not None else None
        seen = probe.observed_level(hosts)
        state, _ = probe.advance(state, hosts, now, damping)
        if seen is None:
            assert state.level is before
            continue
        if before is None or seen.strength >= before.strength:
            weaker_run = []
            assert state.level is seen
            continue
        weaker_run.append(now)
        if state.level is not before:
            assert state.level is not None and state.level.strength < before.strength
            assert len(weaker_run) >= k and weaker_run[-1] - weaker_run[0] >= t
            weaker_run = []


# --- probe: verified names re-pinned only after confirmation (issue 12 point 6) ----------

AB = (ph(V, "a"), ph(V, "b"))
FORGED = (ph(V, "evil"),)  # the MX forged to a host with a valid certificate of its own


def test_other_verified_names_are_held() -> None:
    # A DNS forger present during one probe must not re-pin secure match= to its host.
    ((state, held),) = run([(HOUR, FORGED)], run([(0.0, AB)])[-1][0])
    assert held
    assert state.level is ProbeLevel.VERIFY
    assert state.verified_names == ("a", "b")
    assert state.pending is ProbeLevel.VERIFY and state.pending_names == ("evil",)
    assert (state.pending_count, state.pending_since) == (1, HOUR)
    assert state.hosts == FORGED  # what was seen, for explain


def test_other_verified_names_apply_after_k_probes_over_t() -> None:
    rounds = [(0.0, AB)] + [(i * 3 * HOUR, FORGED) for i in range(1, 4)]
    res = run(rounds)
    assert [s.verified_names for s, _ in res] == [("a", "b"), ("a", "b"), ("a", "b"), ("evil",)]
    assert [h for _, h in res] == [False, True, True, False]
    final = res[-1][0]
    assert final.pending is None and final.pending_names == () and final.pending_count == 0


def test_other_verified_names_too_fast_are_held() -> None:
    res = run([(0.0, AB)] + [(float(i), FORGED) for i in range(1, 10)])
    assert all(s.verified_names == ("a", "b") for s, _ in res)
    assert res[-1][0].pending_count == 9


def test_the_old_names_seen_again_reset_the_run() -> None:
    res = run([(0.0, AB), (1 * HOUR, FORGED), (4 * HOUR, AB), (8 * HOUR, FORGED)])
    assert res[2][0].pending is None and res[2][0].pending_names == ()
    assert res[-1][0].verified_names == ("a", "b")
    assert (res[-1][0].pending_count, res[-1][0].pending_since) == (1, 8 * HOUR)


def test_a_different_new_set_restarts_the_count() -> None:
    other = (ph(V, "other"),)
    res = run([(0.0, AB), (1 * HOUR, FORGED), (4 * HOUR, other), (8 * HOUR, FORGED)])
    assert all(s.verified_names == ("a", "b") for s, _ in res)
    assert res[-1][0].pending_count == 1


def test_same_names_in_another_order_are_no_change() -> None:
    ((state, held),) = run([(HOUR, (ph(V, "b"), ph(V, "a")))], run([(0.0, AB)])[-1][0])
    assert not held and state.verified_names == ("a", "b") and state.pending is None


def test_an_unreachable_host_keeps_its_verified_name() -> None:
    # Unreachable says nothing about TLS: not a change of the verified set.
    ((state, held),) = run([(HOUR, (ph(V, "a"), ph(UR, "b")))], run([(0.0, AB)])[-1][0])
    assert not held and state.verified_names == ("a", "b")


def test_a_removed_mx_host_is_a_change_too() -> None:
    ((state, held),) = run([(HOUR, (ph(V, "a"),))], run([(0.0, AB)])[-1][0])
    assert held and state.verified_names == ("a", "b") and state.pending_names == ("a",)


def test_weaker_round_during_a_name_change_starts_a_weaker_run() -> None:
    res = run([(0.0, AB), (1 * HOUR, FORGED), (2 * HOUR, MAY_ROUND)])
    state = res[-1][0]
    assert state.level is ProbeLevel.VERIFY and state.verified_names == ("a", "b")
    assert state.pending is ProbeLevel.MAY and state.pending_names == ()
    assert (state.pending_count, state.pending_since) == (1, 2 * HOUR)


def test_stronger_level_brings_its_names_at_once() -> None:
    # From encrypt to verify the names are new, not re-pinned: applied at once as before.
    ((state, held),) = run([(HOUR, FORGED)], run([(0.0, ENCRYPT_ROUND)])[-1][0])
    assert not held and state.verified_names == ("evil",)


def test_secure_profile_keeps_match_while_names_are_held() -> None:
    strict = next(p for p in DEFAULT_PROFILES if p.name == "strict")
    state = run([(0.0, AB), (HOUR, FORGED)])[-1][0]
    verdict = decide(Evidence(Destination("example.com"), probe=state), strict, 2 * HOUR)
    assert verdict.policy == Policy(TlsLevel.SECURE, ("a", "b"), (("servername", "hostname"),))
    assert "holding names against evil seen 1x" in verdict.reason


_name_rounds = st.lists(
    st.tuples(st.floats(0, 10 * HOUR), st.sampled_from([AB, FORGED, (ph(V, "c"),)])),
    max_size=12,
)


@given(_name_rounds, st.integers(1, 4), st.floats(0, 12 * HOUR))
def test_names_never_change_without_k_probes_over_t(
    steps: list[tuple[float, tuple[ProbeHost, ...]]], k: int, t: float
) -> None:
    """Verified names in force change only after >= K consecutive rounds naming the same
    new set, spread over >= T."""
    damping = probe.Damping(k, t)
    now = 0.0
    state, _ = probe.advance(None, AB, now, damping)
    run_sets: list[tuple[float, frozenset[str]]] = []
    for gap, hosts in steps:
        now += gap
        before = state.verified_names
        seen = frozenset(probe.verified_names(hosts))
        state, _ = probe.advance(state, hosts, now, damping)
        if seen == frozenset(before):
            run_sets = []
        elif run_sets and run_sets[-1][1] == seen:
            run_sets.append((now, seen))
        else:
            run_sets = [(now, seen)]
        if state.verified_names != before:
            assert frozenset(state.verified_names) == seen
            assert len(run_sets) >= k and now - run_sets[0][0] >= t
            run_sets = []
