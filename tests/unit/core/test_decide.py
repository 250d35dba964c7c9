"""policyd.core.decide: the decision order as a golden table, and "a failure never weakens"."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.codec.postfix_policy import render
from policyd.core.decide import decide
from policyd.core.evidence import (
    MAX_MX_PATTERNS,
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
    StsEvidence,
    StsMode,
    StsPolicy,
    Tlsa,
)
from policyd.core.profile import DEFAULT_PROFILES, Fallback, Profile
from policyd.core.sts import MX_SHOWN_CHARS, describe_mx, to_policy
from policyd.core.types import MAX_REASON, Outcome, Policy, Rule, TlsLevel, Verdict

NOW = 1_700_000_000.0
PROFILES = {p.name: p for p in DEFAULT_PROFILES}
DEST = Destination("example.com")

USABLE = Tlsa(3, 1, 1, b"\x01" * 32)
USABLE_TA = Tlsa(2, 0, 2, b"\x02" * 64)
UNUSABLE = Tlsa(1, 1, 1, b"\x03" * 32)  # PKIX-EE: unusable for SMTP (RFC 7672 3.1.3)

S, INS, F = DnsStatus.SECURE, DnsStatus.INSECURE, DnsStatus.FAILED


def text(v: Verdict) -> str:
    """What the socketmap would answer, in one string."""
    if v.outcome is Outcome.TEMP:
        return "TEMP"
    if v.outcome is Outcome.NOTFOUND:
        return "NOTFOUND"
    assert v.policy is not None
    return render(v.policy)


def host(
    name: str,
    address: DnsStatus = S,
    tlsa: DnsStatus | None = S,
    records: tuple[Tlsa, ...] = (USABLE,),
    pref: int = 10,
) -> MxHost:
    if address is not S:
        tlsa, records = None, ()
    if tlsa is not S:
        records = ()
    return MxHost(
        name,
        pref,
        address,
        ("192.0.2.1",) if address is not F else (),
        address_error="SERVFAIL" if address is F else "",
        tlsa=tlsa,
        tlsa_records=records,
        tlsa_error="timeout" if tlsa is F else "",
    )


def dns(*hosts: MxHost, mx: DnsStatus = S, kind: MxKind = MxKind.LISTED) -> DnsEvidence:
    return DnsEvidence(mx, kind, hosts, error="SERVFAIL" if mx is F else "", fetched_at=NOW)


def sts_policy(
    mode: StsMode = StsMode.ENFORCE,
    mx: tuple[str, ...] = ("mx.example.com", "*.example.net"),
    age: float = 100.0,
    max_age: int = 86400,
) -> StsPolicy:
    return StsPolicy(mode, mx, max_age, "abc123", NOW - age)


def probe_hosts(*pairs: tuple[str, ProbeVerdict]) -> tuple[ProbeHost, ...]:
    return tuple(ProbeHost(h, "192.0.2.1", v, probed_at=NOW) for h, v in pairs)


def probe(
    level: ProbeLevel | None,
    *pairs: tuple[str, ProbeVerdict],
    names: tuple[str, ...] = (),
    pending: ProbeLevel | None = None,
    count: int = 0,
) -> ProbeState:
    return ProbeState(
        level,
        probe_hosts(*pairs),
        names,
        pending=pending,
        pending_count=count,
        pending_since=NOW - 10 if pending else 0.0,
        probed_at=NOW,
    )


V, SS, NT = ProbeVerdict.VALID, ProbeVerdict.SELF_SIGNED, ProbeVerdict.NO_STARTTLS
PROBE_VERIFY = probe(
    ProbeLevel.VERIFY,
    ("mx1.example.com", V),
    ("mx2.example.com", V),
    names=("mx1.example.com", "mx2.example.com"),
)
PROBE_ENCRYPT = probe(ProbeLevel.ENCRYPT, ("mx1.example.com", V), ("mx2.example.com", SS))
PROBE_MAY = probe(ProbeLevel.MAY, ("mx1.example.com", NT), ("mx2.example.com", V))
INSECURE_DNS = dns(host("mx1.example.com", INS), host("mx2.example.com", INS), mx=INS)
DANE_ONLY_DNS = dns(host("mx1.example.com"), host("mx2.example.com", records=(USABLE_TA,)))
ENFORCE = StsEvidence(sts_policy())

STS_SECURE = "secure match=mx.example.com:.example.net servername=hostname"
# The built-in strict profile leaves the Postfix 3.10 attributes off (older Postfix defers
# on them); test_profile_with_sts_attributes checks them.
STS_STRICT = STS_SECURE
# Probe answers ask Postfix for the SNI the probe sent (issue 12 point 3).
SECURE_NAMES = "secure match=mx1.example.com:mx2.example.com servername=hostname"
PROBE_VERIFIED = "verify servername=hostname"


@dataclass(frozen=True)
class Row:
    id: str
    ev: Evidence
    postfix: str
    strict: str
    rule: Rule
    reason: str  # a fragment the reason must contain (for both profiles)


def ev(**kw: object) -> Evidence:
    kw.setdefault("destination", DEST)
    return Evidence(**kw)  # type: ignore[arg-type]


ROWS = [
    # --- overrides --------------------------------------------------------------------
    Row(
        "override-active",
        ev(
            override=Override(
                "example.com",
                Policy(TlsLevel.SECURE, ("mx.example.com",)),
                expires_at=NOW + 60,
                comment="pinned",
                author="alice",
            ),
            dns=DANE_ONLY_DNS,
        ),
        "secure match=mx.example.com",
        "secure match=mx.example.com",
        Rule.OVERRIDE,
        "override by alice: pinned",
    ),
    Row(
        "override-permanent-beats-mx-failure",
        ev(override=Override("example.com", Policy(TlsLevel.MAY)), dns=dns(mx=F)),
        "may",
        "may",
        Rule.OVERRIDE,
        "override by postmaster",
    ),
    Row(
        "override-expired",
        ev(
            override=Override("example.com", Policy(TlsLevel.NONE), expires_at=NOW),
            dns=DANE_ONLY_DNS,
        ),
        "dane-only",
        "dane-only",
        Rule.DANE,
        "DANE: signed MX",
    ),
    Row(
        "override-notfound",
        ev(override=Override("example.com", None, comment="let postfix"), dns=DANE_ONLY_DNS),
        "NOTFOUND",
        "NOTFOUND",
        Rule.OVERRIDE,
        "let postfix",
    ),
    Row(
        "parent-form",
        ev(destination=Destination("example.com", form=DestinationForm.PARENT), dns=DANE_ONLY_DNS),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "parent-domain",
    ),
    Row(
        "parent-form-override",
        ev(
            destination=Destination("example.com", form=DestinationForm.PARENT),
            override=Override(".example.com", Policy(TlsLevel.ENCRYPT)),
        ),
        "encrypt",
        "encrypt",
        Rule.OVERRIDE,
        "override",
    ),
    # --- DNS answers --------------------------------------------------------------------
    Row(
        "mx-failed",
        ev(dns=dns(mx=F), sts=ENFORCE, probe=PROBE_VERIFY),
        "TEMP",
        "TEMP",
        Rule.DNS_FAILURE,
        "SERVFAIL",
    ),
    Row(
        "nxdomain",
        ev(dns=dns(mx=S, kind=MxKind.NXDOMAIN)),
        "NOTFOUND",
        "NOTFOUND",
        Rule.NO_MAIL,
        "NXDOMAIN",
    ),
    Row(
        "null-mx",
        ev(dns=dns(mx=INS, kind=MxKind.NULL), probe=PROBE_VERIFY),
        "NOTFOUND",
        "NOTFOUND",
        Rule.NO_MAIL,
        "null MX",
    ),
    Row(
        "no-mx-hosts",
        ev(dns=dns(mx=S)),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE, MTA-STS or probe evidence",
    ),
    # --- DANE ---------------------------------------------------------------------------
    Row(
        "dane-only",
        ev(dns=DANE_ONLY_DNS, sts=ENFORCE, probe=PROBE_MAY),
        "dane-only",
        "dane-only",
        Rule.DANE,
        "usable TLSA at every MX host (mx1.example.com, mx2.example.com)",
    ),
    Row(
        "dane-insecure-mx",
        ev(dns=dns(host("mx1.example.com"), mx=INS)),
        "dane",
        "dane",
        Rule.DANE,
        "MX RRset not signed",
    ),
    Row(
        "dane-not-every-host",
        ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", INS))),
        "dane",
        "dane",
        Rule.DANE,
        "usable TLSA at mx1.example.com, not at every MX host",
    ),
    Row(
        "dane-no-tlsa-at-one-host",
        ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", S, INS))),
        "dane",
        "dane",
        Rule.DANE,
        "usable TLSA at mx1.example.com",
    ),
    Row(
        "dane-encrypt-unusable-tlsa",
        ev(dns=dns(host("mx1.example.com", records=(UNUSABLE,)))),
        "encrypt",
        "encrypt",
        Rule.DANE,
        "none usable at mx1.example.com",
    ),
    Row(
        "dane-unusable-and-plain",
        ev(dns=dns(host("mx1.example.com", records=(UNUSABLE,)), host("mx2.example.com", INS))),
        "dane",
        "dane",
        Rule.DANE,
        "signed but unusable TLSA at mx1.example.com",
    ),
    Row(
        "dane-skips-failed-host",
        ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", F))),
        "dane-only",
        "dane-only",
        Rule.DANE,
        "skipped: address lookup for mx2.example.com failed (SERVFAIL)",
    ),
    Row(
        "all-hosts-failed",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", S, F)), sts=ENFORCE),
        "TEMP",
        "TEMP",
        Rule.DNS_FAILURE,
        "no usable MX host",
    ),
    Row(
        "hosts-failed-no-probe",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", INS))),
        "dane",
        "dane",
        Rule.DANE,
        "Postfix skips failing hosts: address lookup for mx1.example.com failed",
    ),
    Row(
        "hosts-failed-tlsa-no-probe",
        ev(dns=dns(host("mx1.example.com", S, F), host("mx2.example.com", INS))),
        "dane",
        "dane",
        Rule.DANE,
        "TLSA lookup for mx1.example.com failed (timeout)",
    ),
    Row(
        "hosts-failed-probe-verify",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", INS)), probe=PROBE_VERIFY),
        PROBE_VERIFIED,
        SECURE_NAMES,
        Rule.PROBE,
        "every reachable MX verified",
    ),
    # RFC review D13: dane would be may at mx2 (no TLSA), so the probe's encrypt stands.
    Row(
        "hosts-failed-probe-encrypt",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", INS)), probe=PROBE_ENCRYPT),
        "encrypt",
        "encrypt",
        Rule.PROBE,
        "certificate not verified",
    ),
    Row(
        "hosts-failed-tlsa-probe-encrypt",
        ev(
            dns=dns(host("mx1.example.com", S, F), host("mx2.example.com", INS)),
            probe=PROBE_ENCRYPT,
        ),
        "encrypt",
        "encrypt",
        Rule.PROBE,
        "certificate not verified",
    ),
    Row(
        "hosts-failed-probe-may",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", INS)), probe=PROBE_MAY),
        "dane",
        "dane",
        Rule.DANE,
        "Postfix skips failing hosts",
    ),
    Row(
        "hosts-failed-sts-enforce",
        ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", INS)), sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MTA-STS enforce id=abc123",
    ),
    # --- DANE with an MTA-STS enforce policy: only dane-only pre-empts it ----------------
    Row(
        "sts-beats-unusable-tlsa",
        ev(dns=dns(host("mx1.example.com", records=(UNUSABLE,))), sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "DANE not on every path (signed TLSA but none usable at mx1.example.com)",
    ),
    Row(
        # security review C1 (a): a forged unsigned MX pointing at a host in the
        # attacker's signed zone with PKIX-TA TLSA must not turn secure into encrypt.
        "sts-beats-forged-mx-unusable-tlsa",
        ev(dns=dns(host("mx.attacker.example", records=(UNUSABLE,)), mx=INS), sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MTA-STS enforce id=abc123",
    ),
    Row(
        # C1 (b): the same with DANE-EE TLSA of the attacker's own key.
        "sts-beats-forged-mx-dane-ee",
        ev(dns=dns(host("mx.attacker.example"), mx=INS), sts=ENFORCE, probe=PROBE_VERIFY),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MX RRset not signed",
    ),
    Row(
        # H1 (b): an unsigned domain hosted at a DANE-signed provider.
        "sts-beats-insecure-mx-every-host-tlsa",
        ev(
            dns=dns(host("mx1.example.com"), host("mx2.example.com", records=(USABLE_TA,)), mx=INS),
            sts=ENFORCE,
        ),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "DANE not on every path",
    ),
    Row(
        # H1 (a): signed MX, the backup host has no TLSA (Postfix: may there).
        "sts-beats-dane-not-every-host",
        ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", INS)), sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "usable TLSA at mx1.example.com, not at every MX host",
    ),
    Row(
        "sts-beats-unusable-and-plain",
        ev(
            dns=dns(host("mx1.example.com", records=(UNUSABLE,)), host("mx2.example.com", INS)),
            sts=ENFORCE,
        ),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "signed but unusable TLSA at mx1.example.com",
    ),
    Row(
        "sts-beats-forged-null-mx",
        ev(dns=dns(mx=INS, kind=MxKind.NULL), sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "DANE not on every path (null MX",
    ),
    Row(
        "sts-signed-null-mx-no-mail",
        ev(dns=dns(mx=S, kind=MxKind.NULL), sts=ENFORCE),
        "NOTFOUND",
        "NOTFOUND",
        Rule.NO_MAIL,
        "null MX",
    ),
    Row(
        "dane-only-skipping-failed-host-beats-sts",
        ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", F)), sts=ENFORCE),
        "dane-only",
        "dane-only",
        Rule.DANE,
        "skipped: address lookup for mx2.example.com failed",
    ),
    # --- MTA-STS ------------------------------------------------------------------------
    Row(
        "sts-enforce",
        ev(dns=INSECURE_DNS, sts=ENFORCE, probe=PROBE_MAY),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MTA-STS enforce id=abc123 mx=mx.example.com,*.example.net fetched 100s ago",
    ),
    Row(
        "sts-enforce-without-dns",
        ev(sts=ENFORCE),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MTA-STS enforce",
    ),
    Row(
        "sts-dedup-and-case",
        ev(sts=StsEvidence(sts_policy(mx=("*.Example.NET.", "*.example.net", "MX.example.com")))),
        "secure match=.example.net:mx.example.com servername=hostname",
        "secure match=.example.net:mx.example.com servername=hostname",
        Rule.MTA_STS,
        "MTA-STS enforce",
    ),
    Row(
        "sts-refresh-error-keeps-cache",
        ev(dns=INSECURE_DNS, sts=StsEvidence(sts_policy(), error="fetch timed out")),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "refresh failed: fetch timed out",
    ),
    Row(
        "sts-expired-not-used",
        ev(dns=INSECURE_DNS, sts=StsEvidence(sts_policy(age=86401.0))),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE, MTA-STS or probe evidence",
    ),
    Row(
        "sts-expired-falls-to-probe",
        ev(dns=INSECURE_DNS, sts=StsEvidence(sts_policy(age=86400.0)), probe=PROBE_ENCRYPT),
        "encrypt",
        "encrypt",
        Rule.PROBE,
        "mx2.example.com self-signed",
    ),
    Row(
        "sts-testing-not-enforced",
        ev(dns=INSECURE_DNS, sts=StsEvidence(sts_policy(StsMode.TESTING))),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "MTA-STS testing: not enforced",
    ),
    Row(
        "sts-none-mode",
        ev(sts=StsEvidence(sts_policy(StsMode.NONE, mx=()))),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE, MTA-STS or probe evidence",
    ),
    Row(
        "sts-pending-cold",
        ev(dns=INSECURE_DNS, sts=StsEvidence(pending=True)),
        "NOTFOUND",
        "TEMP",
        Rule.DEFAULT,
        "",
    ),
    Row(
        "sts-pending-cold-with-probe",
        ev(dns=INSECURE_DNS, sts=StsEvidence(pending=True), probe=PROBE_VERIFY),
        PROBE_VERIFIED,
        "TEMP",
        Rule.PROBE,
        "",
    ),
    Row(
        "sts-pending-but-cached",
        ev(sts=StsEvidence(sts_policy(), pending=True)),
        STS_SECURE,
        STS_STRICT,
        Rule.MTA_STS,
        "MTA-STS enforce",
    ),
    Row(
        "sts-pending-dane-first",
        ev(dns=DANE_ONLY_DNS, sts=StsEvidence(pending=True)),
        "dane-only",
        "dane-only",
        Rule.DANE,
        "DANE",
    ),
    # --- probe --------------------------------------------------------------------------
    Row(
        "probe-verify",
        ev(dns=INSECURE_DNS, probe=PROBE_VERIFY),
        PROBE_VERIFIED,
        SECURE_NAMES,
        Rule.PROBE,
        "probe: every reachable MX verified",
    ),
    Row(
        "probe-verify-without-names",
        ev(probe=probe(ProbeLevel.VERIFY)),
        PROBE_VERIFIED,
        PROBE_VERIFIED,
        Rule.PROBE,
        "probe: every reachable MX verified",
    ),
    Row(
        "probe-verify-held",
        ev(probe=replace(PROBE_VERIFY, pending=ProbeLevel.MAY, pending_count=2)),
        PROBE_VERIFIED,
        SECURE_NAMES,
        Rule.PROBE,
        "holding against may seen 2x",
    ),
    Row(
        "probe-encrypt",
        ev(dns=INSECURE_DNS, probe=PROBE_ENCRYPT),
        "encrypt",
        "encrypt",
        Rule.PROBE,
        "TLS everywhere, certificate not verified (mx2.example.com self-signed)",
    ),
    Row(
        "probe-may",
        ev(dns=INSECURE_DNS, probe=PROBE_MAY),
        "may",
        "may",
        Rule.PROBE,
        "an MX without working TLS (mx1.example.com no-starttls, mx2.example.com valid)",
    ),
    Row(
        "probe-nothing-reachable",
        ev(probe=probe(None, ("mx1.example.com", ProbeVerdict.UNREACHABLE))),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE, MTA-STS or probe evidence",
    ),
    # --- default ------------------------------------------------------------------------
    Row(
        "unknown",
        ev(),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE, MTA-STS or probe evidence",
    ),
    Row(
        "ip-literal",
        ev(destination=Destination("192.0.2.1", form=DestinationForm.ADDRESS)),
        "NOTFOUND",
        "NOTFOUND",
        Rule.DEFAULT,
        "no DANE",
    ),
]


@pytest.mark.parametrize("profile", ["postfix", "strict"])
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_golden(row: Row, profile: str) -> None:
    verdict = decide(row.ev, PROFILES[profile], NOW)
    expected = row.postfix if profile == "postfix" else row.strict
    assert text(verdict) == expected
    if expected == "TEMP" and row.rule is not Rule.DNS_FAILURE:
        assert verdict.rule is Rule.MTA_STS
        assert "MTA-STS policy fetch still running" in verdict.reason
    else:
        assert verdict.rule is row.rule
        assert row.reason in verdict.reason
    assert "\n" not in verdict.reason


def test_golden_table_covers_every_rule_and_outcome() -> None:
    verdicts = [decide(r.ev, p, NOW) for r in ROWS for p in DEFAULT_PROFILES]
    assert {v.rule for v in verdicts} == set(Rule)
    assert {v.outcome for v in verdicts} == set(Outcome)
    levels = {v.policy.level for v in verdicts if v.policy is not None}
    assert levels >= set(TlsLevel) - {TlsLevel.NONE, TlsLevel.FINGERPRINT}


@pytest.mark.parametrize(
    ("unknown", "expected"),
    [(Fallback.NOTFOUND, "NOTFOUND"), (Fallback.MAY, "may"), (Fallback.ENCRYPT, "encrypt")],
)
def test_custom_profile_unknown(unknown: Fallback, expected: str) -> None:
    assert text(decide(ev(), Profile("custom", unknown=unknown), NOW)) == expected


def test_custom_profile_probe_no_tls_notfound() -> None:
    prof = Profile("custom", probe_no_tls=Fallback.NOTFOUND)
    v = decide(ev(probe=PROBE_MAY), prof, NOW)
    assert text(v) == "NOTFOUND"
    assert v.rule is Rule.PROBE


def test_sts_age_in_reason_moves_with_now() -> None:
    v = decide(ev(sts=ENFORCE), PROFILES["postfix"], NOW + 900)
    assert "fetched 1000s ago" in v.reason


def test_override_expiry_boundary() -> None:
    e = ev(override=Override("example.com", Policy(TlsLevel.MAY), expires_at=NOW + 1))
    assert text(decide(e, PROFILES["postfix"], NOW)) == "may"
    assert text(decide(e, PROFILES["postfix"], NOW + 1)) == "NOTFOUND"


# --- property: adding a failure never yields a weaker verdict -------------------------

HOST_NAMES = ("mx1.example.com", "mx2.example.com", "mx.example.net")


@st.composite
def mx_hosts(draw: st.DrawFn, name: str) -> MxHost:
    address = draw(st.sampled_from(list(DnsStatus)))
    tlsa: DnsStatus | None = None
    records: tuple[Tlsa, ...] = ()
    if address is S:
        tlsa = draw(st.sampled_from([None, S, INS, F]))
        if tlsa is S:
            records = tuple(draw(st.lists(st.sampled_from([USABLE, USABLE_TA, UNUSABLE]))))
    return host(name, address, tlsa, records, pref=draw(st.integers(0, 20)))


@st.composite
def dns_evidence(
    draw: st.DrawFn, mx_status: tuple[DnsStatus, ...] = tuple(DnsStatus)
) -> DnsEvidence:
    names = draw(st.lists(st.sampled_from(HOST_NAMES), max_size=3, unique=True))
    hosts = tuple(draw(mx_hosts(n)) for n in names)
    kind = draw(
        st.sampled_from([MxKind.LISTED] * 6 + [MxKind.IMPLICIT, MxKind.NULL, MxKind.NXDOMAIN])
    )
    mx = draw(st.sampled_from(mx_status))
    return dns(*hosts, mx=mx, kind=kind)


@st.composite
def sts_evidence(draw: st.DrawFn) -> StsEvidence:
    pol: StsPolicy | None = None
    if draw(st.booleans()):
        mode = draw(st.sampled_from(list(StsMode)))
        mx = tuple(
            draw(
                st.lists(
                    st.sampled_from(["mx1.example.com", "*.example.com", "*.example.net"]),
                    min_size=1,
                    max_size=3,
                )
            )
        )
        pol = sts_policy(
            mode, mx, age=draw(st.sampled_from([0.0, 100.0, 86399.0, 86400.0, 90000.0]))
        )
    return StsEvidence(
        pol, error=draw(st.sampled_from(["", "TXT lookup failed"])), pending=draw(st.booleans())
    )


@st.composite
def probe_states(draw: st.DrawFn) -> ProbeState:
    level = draw(st.sampled_from([None, *ProbeLevel]))
    verdicts = st.sampled_from(list(ProbeVerdict))
    pairs = tuple(
        (n, draw(verdicts))
        for n in draw(st.lists(st.sampled_from(HOST_NAMES), max_size=3, unique=True))
    )
    names = tuple(draw(st.lists(st.sampled_from(HOST_NAMES), max_size=2, unique=True)))
    pending = draw(st.sampled_from([None, *ProbeLevel]))
    return probe(level, *pairs, names=names, pending=pending, count=1 if pending else 0)


@st.composite
def evidence(draw: st.DrawFn) -> Evidence:
    override = None
    if draw(st.integers(0, 9)) == 0:
        override = Override(
            "example.com",
            draw(st.sampled_from([None, Policy(TlsLevel.MAY)])),
            expires_at=draw(st.sampled_from([None, NOW - 1])),
        )
    return Evidence(
        destination=draw(
            st.sampled_from([DEST] * 9 + [Destination("example.com", form=DestinationForm.PARENT)])
        ),
        override=override,
        dns=draw(st.one_of(st.none(), dns_evidence(), dns_evidence(), dns_evidence())),
        sts=draw(sts_evidence()),
        probe=draw(st.one_of(st.none(), probe_states())),
    )


def failures(e: Evidence) -> list[tuple[str, Evidence]]:
    """Every single failure that can be injected into ``e``."""
    out: list[tuple[str, Evidence]] = []
    d = e.dns
    if d is not None:
        if d.mx is not F:
            out.append(("mx failed", replace(e, dns=replace(d, mx=F, error="SERVFAIL"))))
        for i, h in enumerate(d.hosts):
            if h.address is not F:
                failed = host(h.name, F, pref=h.preference)
                hosts = (*d.hosts[:i], failed, *d.hosts[i + 1 :])
                out.append((f"{h.name} address failed", replace(e, dns=replace(d, hosts=hosts))))
            if h.address is S and h.tlsa is not F:
                failed = host(h.name, S, F, pref=h.preference)
                hosts = (*d.hosts[:i], failed, *d.hosts[i + 1 :])
                out.append((f"{h.name} TLSA failed", replace(e, dns=replace(d, hosts=hosts))))
    if e.sts.policy is not None and not e.sts.error:
        out.append(
            ("sts refresh failed", replace(e, sts=replace(e.sts, error="refresh timed out")))
        )
    return out


def weakest_path(v: Verdict, e: Evidence) -> int:
    """The strength of the weakest path Postfix may take under ``v`` (an attacker can
    block the other MX hosts). Only ``dane`` differs from ``Verdict.strength``: Postfix
    authenticates hosts with usable TLSA and falls back per host, to encrypt where the
    TLSA is unusable and to may where there is none, and an unsigned MX RRset can be
    forged to name a host without TLSA (may). Hosts whose lookups failed are left out:
    Postfix skips them (RFC review D13)."""
    if v.policy is None or v.policy.level is not TlsLevel.DANE:
        return v.strength
    d = e.dns
    if d is None or d.mx is not S:
        return TlsLevel.MAY.strength
    floors = []
    for h in d.hosts:
        if h.address is F or h.tlsa is F:
            continue
        if h.address is S and h.tlsa is S and any(r.usable for r in h.tlsa_records):
            floors.append(TlsLevel.DANE_ONLY.strength)
        elif h.address is S and h.tlsa is S and h.tlsa_records:
            floors.append(TlsLevel.ENCRYPT.strength)
        else:
            floors.append(TlsLevel.MAY.strength)
    return min(floors, default=TlsLevel.MAY.strength)


def test_weakest_path_of_dane() -> None:
    mixed = ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", INS)))
    unusable = ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", records=(UNUSABLE,))))
    dane_v = decide(mixed, PROFILES["postfix"], NOW)
    assert text(dane_v) == "dane"
    assert weakest_path(dane_v, mixed) == TlsLevel.MAY.strength
    assert weakest_path(decide(unusable, PROFILES["postfix"], NOW), unusable) == (
        TlsLevel.ENCRYPT.strength
    )
    unsigned = ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", INS), mx=INS))
    assert weakest_path(dane_v, unsigned) == TlsLevel.MAY.strength


@settings(max_examples=3000)
@given(evidence())
def test_adding_a_failure_never_weakens(e: Evidence) -> None:
    """On the level scale, except that mandatory TLS (encrypt and up) may replace a
    ``dane`` whose weakest path is no better (see weakest_path): a probe's encrypt where
    dane is may at every host left is not a weakening (RFC review D13)."""
    for prof in DEFAULT_PROFILES:
        before = decide(e, prof, NOW)
        for what, failed in failures(e):
            after = decide(failed, prof, NOW)
            per_path = after.strength >= TlsLevel.ENCRYPT.strength and weakest_path(
                after, failed
            ) >= weakest_path(before, e)
            assert after.strength >= before.strength or per_path, (
                f"{prof.name}: {what}: {text(before)!r} ({before.reason}) -> "
                f"{text(after)!r} ({after.reason})"
            )


def test_known_counterexample_unusable_tlsa_left() -> None:
    """The shrunk counterexample of the property above, kept as a plain regression test.

    mx1 has usable TLSA, mx2 only unusable TLSA: ``dane`` (3). mx1's address lookup fails:
    only mx2 is left, all its TLSA unusable, so ``encrypt`` (2): weaker than before.
    """
    e = ev(dns=dns(host("mx1.example.com"), host("mx2.example.com", records=(UNUSABLE,))))
    failed = ev(dns=dns(host("mx1.example.com", F), host("mx2.example.com", records=(UNUSABLE,))))
    for prof in DEFAULT_PROFILES:
        assert text(decide(e, prof, NOW)) == "dane"
        assert decide(failed, prof, NOW).strength >= TlsLevel.DANE.strength


# --- property: DANE pre-empts a valid MTA-STS enforce policy only as dane-only ------------

ENFORCE_MX = st.lists(
    st.sampled_from(["mx1.example.com", "*.example.com", "*.example.net"]),
    min_size=1,
    max_size=3,
)


@st.composite
def enforced(draw: st.DrawFn, mx_status: tuple[DnsStatus, ...]) -> Evidence:
    """Evidence with a valid enforce policy and no override, any other evidence."""
    pol = sts_policy(
        StsMode.ENFORCE,
        tuple(draw(ENFORCE_MX)),
        age=draw(st.sampled_from([0.0, 100.0, 86399.0])),
    )
    return ev(
        dns=draw(st.one_of(st.none(), dns_evidence(mx_status))),
        sts=StsEvidence(
            pol,
            error=draw(st.sampled_from(["", "TXT lookup failed"])),
            pending=draw(st.booleans()),
        ),
        probe=draw(st.one_of(st.none(), probe_states())),
    )


@settings(max_examples=1500)
@given(enforced(mx_status=(INS, F)))
def test_unsigned_mx_never_weakens_an_enforce_policy(e: Evidence) -> None:
    """Security review C1: whatever an unsigned (forgeable) MX RRset says, a valid enforce
    policy gives at least ``secure`` (or TEMP)."""
    for prof in DEFAULT_PROFILES:
        v = decide(e, prof, NOW)
        assert v.outcome is Outcome.TEMP or v.strength >= TlsLevel.SECURE.strength, (
            f"{prof.name}: {text(v)!r} ({v.reason})"
        )


@settings(max_examples=1500)
@given(enforced(mx_status=tuple(DnsStatus)))
def test_only_dane_only_preempts_an_enforce_policy(e: Evidence) -> None:
    """With a valid enforce policy the answer is the policy's secure match=..., dane-only
    from a signed MX RRset, TEMP, or a signed "no mail here"; nothing else."""
    assert e.sts.policy is not None
    for prof in DEFAULT_PROFILES:
        v = decide(e, prof, NOW)
        signed = e.dns is not None and e.dns.mx is S
        if v.outcome is Outcome.TEMP:
            continue
        if v.outcome is Outcome.NOTFOUND:
            assert v.rule is Rule.NO_MAIL and signed, v
            continue
        assert v.policy is not None
        if v.policy.level is TlsLevel.DANE_ONLY:
            assert signed, v
        else:
            assert v.rule is Rule.MTA_STS, v
            assert v.policy == to_policy("example.com", e.sts.policy, prof.sts_attributes)


# --- hostile policies: bounded work and bounded text --------------------------------------


def test_sts_policy_refuses_ip_literals_and_too_many_patterns() -> None:
    with pytest.raises(ValueError, match="IP address"):
        StsPolicy(StsMode.ENFORCE, ("mx.example.com", "192.0.2.1"), 86400, "a", NOW)
    many = tuple(f"m{i}.example.com" for i in range(MAX_MX_PATTERNS + 1))
    with pytest.raises(ValueError, match=f"more than {MAX_MX_PATTERNS}"):
        StsPolicy(StsMode.ENFORCE, many, 86400, "a", NOW)


def test_policy_at_the_cap_gives_bounded_reason_and_linear_match() -> None:
    names = tuple(f"m{i}." + "x" * 60 + ".example.com" for i in range(MAX_MX_PATTERNS // 2))
    e = ev(sts=StsEvidence(sts_policy(mx=(*names, *("*." + n for n in names)))))
    for prof in DEFAULT_PROFILES:
        v = decide(e, prof, NOW)
        assert v.policy is not None
        assert len(v.policy.match) == MAX_MX_PATTERNS  # mx.* and *.mx.* map apart
        assert len(v.reason) <= MAX_REASON
        assert f"(+{MAX_MX_PATTERNS - 2} more)" in v.reason  # 2 of 76 characters fit
    assert describe_mx(("a", "b")) == "a,b"
    assert describe_mx(("x" * 300, "b")) == "x" * 300 + " (+1 more)"
    assert len(describe_mx(names)) <= MX_SHOWN_CHARS + len(" (+99 more)")


def test_reason_is_bounded() -> None:
    v = Verdict(Outcome.TEMP, Rule.DNS_FAILURE, "x" * 10_000)
    assert len(v.reason) == MAX_REASON
    assert v.reason.endswith("...")
    assert Verdict(Outcome.TEMP, Rule.DNS_FAILURE, "short").reason == "short"


def test_profile_with_sts_attributes() -> None:
    """Postfix >= 3.10: the STS attributes and, for TLSRPT, one policy_string per line."""
    v = decide(ev(dns=INSECURE_DNS, sts=ENFORCE), Profile("tlsrpt", sts_attributes=True), NOW)
    assert text(v) == (
        STS_SECURE + " policy_type=sts policy_domain=example.com"
        " mx_host_pattern=mx.example.com mx_host_pattern=*.example.net"
        " { policy_string = version: STSv1 } { policy_string = mode: enforce }"
        " { policy_string = mx: mx.example.com } { policy_string = mx: *.example.net }"
        " { policy_string = max_age: 86400 }"
    )
