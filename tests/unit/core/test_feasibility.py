"""policyd.core.feasibility: can the enforced policy be met now? Pure, evidence in."""

from __future__ import annotations

import hashlib

import pytest

from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    Evidence,
    MxHost,
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
from policyd.core.feasibility import (
    dane_problem,
    hex_digest,
    override_problem,
    problem,
    sts_problem,
    tlsa_mismatch,
)
from policyd.core.types import Policy, Rule, TlsLevel, Verdict, notfound, policy, temp

NOW = 1_700_000_000.0
LEAF = hashlib.sha256(b"leaf certificate").digest()
SPKI = hashlib.sha256(b"public key").digest()
OTHER = hashlib.sha256(b"someone else").digest()
DEST = Destination("example.com")


def colon(digest: bytes) -> str:
    """As the probe writes it (policyd.adapters.certverify.fingerprints)."""
    return ":".join(f"{b:02X}" for b in digest)


def mx(name: str, *tlsa: Tlsa) -> MxHost:
    return MxHost(
        name,
        10,
        DnsStatus.SECURE,
        ("192.0.2.1",),
        tlsa=DnsStatus.SECURE if tlsa else None,
        tlsa_records=tlsa,
    )


def seen(
    host: str,
    verdict: ProbeVerdict = ProbeVerdict.VALID,
    leaf: bytes | None = LEAF,
    spki: bytes | None = SPKI,
    address: str = "192.0.2.1",
) -> ProbeHost:
    return ProbeHost(
        host,
        address,
        verdict,
        leaf_sha256="" if leaf is None else colon(leaf),
        spki_sha256="" if spki is None else colon(spki),
    )


def evidence(
    hosts: tuple[MxHost, ...] = (),
    probes: tuple[ProbeHost, ...] = (),
    sts: StsPolicy | None = None,
    override: Policy | None = None,
) -> Evidence:
    return Evidence(
        DEST,
        override=None if override is None else Override(DEST.key, override),
        dns=DnsEvidence(DnsStatus.SECURE, hosts=hosts) if hosts else None,
        sts=StsEvidence(sts),
        probe=ProbeState(ProbeLevel.VERIFY, probes) if probes else None,
    )


def test_hex_digest_normalises_postfix_and_probe_forms() -> None:
    assert hex_digest(colon(LEAF)) == LEAF.hex()
    assert hex_digest(" AB:cd ") == "abcd"


# -- MTA-STS ---------------------------------------------------------------------------


def sts(mode: StsMode = StsMode.ENFORCE, *patterns: str) -> StsPolicy:
    return StsPolicy(mode, patterns or ("*.example.com",), 86400, "id1", NOW - 60)


def test_sts_enforce_with_a_matching_mx_is_fine() -> None:
    assert sts_problem(sts(), (mx("mx1.example.com"),)) is None
    assert sts_problem(sts(StsMode.ENFORCE, "MX.Example.NET."), (mx("mx.example.net"),)) is None


def test_sts_enforce_without_any_matching_mx_is_a_problem() -> None:
    # "*." stands for exactly one label (RFC 8461 4.1): a.b.example.com does not match.
    found = sts_problem(sts(), (mx("a.b.example.com"), mx("mail.other.net")))
    assert found is not None
    assert "a.b.example.com" in found and "mail.other.net" in found and "*.example.com" in found


def test_sts_one_matching_host_of_several_is_enough() -> None:
    assert sts_problem(sts(), (mx("mail.other.net"), mx("mx.example.com"))) is None


def test_sts_testing_mode_and_no_hosts_are_never_problems() -> None:
    assert sts_problem(sts(StsMode.TESTING, "mx.example.com"), (mx("mail.other.net"),)) is None
    assert sts_problem(sts(), ()) is None


def test_problem_for_an_sts_verdict_uses_the_cached_policy_and_mx_hosts() -> None:
    verdict = policy(Rule.MTA_STS, "MTA-STS enforce", Policy(TlsLevel.SECURE, (".example.com",)))
    bad = evidence(hosts=(mx("mail.other.net"),), sts=sts())
    assert problem(verdict, bad, NOW) is not None
    good = evidence(hosts=(mx("mx.example.com"),), sts=sts())
    assert problem(verdict, good, NOW) is None
    expired = evidence(hosts=(mx("mail.other.net"),), sts=sts())
    assert problem(verdict, expired, NOW + 2 * 86400) is None  # the policy no longer applies


# -- DANE ------------------------------------------------------------------------------


def ee(selector: int, digest: bytes) -> Tlsa:
    return Tlsa(3, selector, 1, digest)


@pytest.mark.parametrize(
    "record",
    [ee(1, SPKI), ee(0, LEAF)],
    ids=["3-1-1 spki", "3-0-1 certificate"],
)
def test_tlsa_matching_the_probed_certificate_is_fine(record: Tlsa) -> None:
    assert not tlsa_mismatch(mx("mx.example.com", record), (seen("mx.example.com"),))


def test_tlsa_matching_no_probed_certificate_is_a_mismatch() -> None:
    host = mx("mx.example.com", ee(1, OTHER), ee(0, OTHER))
    assert tlsa_mismatch(host, (seen("MX.example.com."),))


def test_selector_decides_which_digest_is_compared() -> None:
    # The SPKI digest in a selector-0 (full certificate) record does not match.
    assert tlsa_mismatch(mx("mx.example.com", ee(0, SPKI)), (seen("mx.example.com"),))


def test_one_matching_address_of_a_host_is_enough() -> None:
    host = mx("mx.example.com", ee(1, SPKI))
    probes = (
        seen("mx.example.com", spki=OTHER, address="192.0.2.1"),
        seen("mx.example.com", address="2001:db8::1"),
    )
    assert not tlsa_mismatch(host, probes)


@pytest.mark.parametrize(
    "records",
    [
        (Tlsa(2, 1, 1, OTHER),),  # DANE-TA: needs the chain
        (ee(1, OTHER), Tlsa(3, 1, 2, hashlib.sha512(b"x").digest())),  # SHA-512: not probed
        (Tlsa(1, 1, 1, OTHER),),  # PKIX-EE: unusable for SMTP (RFC 7672 3.1.3)
        (),
    ],
    ids=["dane-ta", "sha512", "pkix-ee", "no-tlsa"],
)
def test_what_the_probe_cannot_judge_is_never_a_mismatch(records: tuple[Tlsa, ...]) -> None:
    assert not tlsa_mismatch(mx("mx.example.com", *records), (seen("mx.example.com"),))


def test_no_certificate_seen_is_never_a_mismatch() -> None:
    host = mx("mx.example.com", ee(1, OTHER))
    assert not tlsa_mismatch(host, ())
    assert not tlsa_mismatch(host, (seen("other.example.com"),))
    no_tls = seen("mx.example.com", ProbeVerdict.NO_STARTTLS, leaf=None, spki=None)
    assert not tlsa_mismatch(host, (no_tls,))


DANE_ONLY = policy(Rule.DANE, "DANE: signed MX", Policy(TlsLevel.DANE_ONLY))


def test_dane_problem_needs_every_mx_host_to_mismatch() -> None:
    bad = mx("mx1.example.com", ee(1, OTHER))
    good = mx("mx2.example.com", ee(1, SPKI))
    probes = (seen("mx1.example.com"), seen("mx2.example.com"))
    assert problem(DANE_ONLY, evidence((bad, good), probes), NOW) is None
    bad2 = mx("mx2.example.com", ee(0, OTHER))
    found = problem(DANE_ONLY, evidence((bad, bad2), probes), NOW)
    assert found is not None
    assert "mx1.example.com" in found and "TLSA" in found


def test_dane_host_without_tlsa_keeps_opportunistic_delivery_open() -> None:
    verdict = policy(Rule.DANE, "DANE: some hosts", Policy(TlsLevel.DANE))
    hosts = (mx("mx1.example.com", ee(1, OTHER)), mx("mx2.example.com"))
    probes = (seen("mx1.example.com"), seen("mx2.example.com"))
    assert problem(verdict, evidence(hosts, probes), NOW) is None


def test_dane_without_probe_or_dns_evidence_is_no_problem() -> None:
    assert dane_problem(evidence((mx("mx.example.com", ee(1, OTHER)),))) is None
    assert dane_problem(evidence(probes=(seen("mx.example.com"),))) is None


# -- overrides -------------------------------------------------------------------------


def override(pol: Policy) -> Verdict:
    return policy(Rule.OVERRIDE, "override by root", pol)


def test_override_verify_with_every_reachable_host_failing_is_a_problem() -> None:
    probes = (
        seen("mx1.example.com", ProbeVerdict.EXPIRED),
        seen("mx2.example.com", ProbeVerdict.NAME_MISMATCH),
        seen("mx3.example.com", ProbeVerdict.UNREACHABLE, leaf=None, spki=None),
    )
    found = problem(override(Policy(TlsLevel.VERIFY)), evidence(probes=probes), NOW)
    assert found is not None
    assert "override verify" in found and "mx1.example.com expired" in found
    assert "mx3" not in found  # unreachable says nothing about TLS


def test_override_verify_with_one_valid_host_is_fine() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.EXPIRED), seen("mx2.example.com"))
    assert problem(override(Policy(TlsLevel.VERIFY)), evidence(probes=probes), NOW) is None


def test_override_with_nothing_reachable_is_no_problem() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.UNREACHABLE, leaf=None, spki=None),)
    assert problem(override(Policy(TlsLevel.SECURE)), evidence(probes=probes), NOW) is None
    assert problem(override(Policy(TlsLevel.SECURE)), evidence(), NOW) is None


def test_name_mismatch_is_inconclusive_where_match_names_other_hosts() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.NAME_MISMATCH),)
    ev = evidence(probes=probes)
    assert problem(override(Policy(TlsLevel.SECURE, (".example.net",))), ev, NOW) is None
    assert problem(override(Policy(TlsLevel.VERIFY, ("mx.example.net",))), ev, NOW) is None
    assert problem(override(Policy(TlsLevel.VERIFY)), ev, NOW) is not None
    untrusted = evidence(probes=(seen("mx1.example.com", ProbeVerdict.UNKNOWN_ISSUER),))
    assert problem(override(Policy(TlsLevel.SECURE, (".example.net",))), untrusted, NOW)


def test_override_fingerprint_compares_digests() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.SELF_SIGNED),)
    ev = evidence(probes=probes)
    pinned = override(Policy(TlsLevel.FINGERPRINT, (colon(SPKI),)))
    assert problem(pinned, ev, NOW) is None  # self-signed, but pinned: fine
    wrong = override(Policy(TlsLevel.FINGERPRINT, (colon(OTHER),)))
    found = problem(wrong, ev, NOW)
    assert found is not None and "fingerprint" in found
    sha1 = override(Policy(TlsLevel.FINGERPRINT, ("AB:" * 19 + "CD",)))
    assert problem(sha1, ev, NOW) is None  # another digest: the probe cannot compare


def test_override_fingerprint_against_a_host_without_tls() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.NO_STARTTLS, leaf=None, spki=None),)
    pinned = override(Policy(TlsLevel.FINGERPRINT, (colon(SPKI),)))
    assert problem(pinned, evidence(probes=probes), NOW) is not None


def test_override_dane_only_uses_the_tlsa_rule_not_pkix() -> None:
    # A self-signed certificate pinned by DANE-EE is exactly what dane-only accepts.
    hosts = (mx("mx.example.com", ee(1, SPKI)),)
    probes = (seen("mx.example.com", ProbeVerdict.SELF_SIGNED),)
    verdict = override(Policy(TlsLevel.DANE_ONLY))
    assert problem(verdict, evidence(hosts, probes), NOW) is None
    stale = (mx("mx.example.com", ee(1, OTHER)),)
    found = problem(verdict, evidence(stale, probes), NOW)
    assert found is not None and found.startswith("override dane-only: DANE")


def test_override_without_authentication_is_never_a_problem() -> None:
    probes = (seen("mx1.example.com", ProbeVerdict.NO_STARTTLS, leaf=None, spki=None),)
    for level in (TlsLevel.ENCRYPT, TlsLevel.MAY, TlsLevel.NONE):
        assert override_problem(Policy(level), evidence(probes=probes)) is None


def test_verdicts_without_a_policy_are_never_problems() -> None:
    ev = evidence(probes=(seen("mx1.example.com", ProbeVerdict.EXPIRED),))
    assert problem(notfound(Rule.DEFAULT, "nothing known"), ev, NOW) is None
    assert problem(temp(Rule.DNS_FAILURE, "SERVFAIL"), ev, NOW) is None


def test_probe_verdicts_are_not_second_guessed() -> None:
    verdict = policy(Rule.PROBE, "probe: every reachable MX verified", Policy(TlsLevel.VERIFY))
    ev = evidence(probes=(seen("mx1.example.com", ProbeVerdict.EXPIRED),))
    assert problem(verdict, ev, NOW) is None


def test_long_host_lists_are_shortened() -> None:
    hosts = tuple(mx(f"mx{i}.other.net") for i in range(10))
    found = sts_problem(sts(), hosts)
    assert found is not None and "and 6 more" in found and "mx9" not in found
