"""The decision order: override > DANE > MTA-STS enforce > probe evidence > default.

Pure: evidence and ``now`` in, a :class:`Verdict` out. A lookup failure where DANE or a
cached MTA-STS enforce policy may apply never yields a weaker level than the same
evidence without the failure (tests/unit/core/test_decide.py checks that property).

DANE outranks a valid MTA-STS enforce policy only where it protects every path to the
domain: ``dane-only``, which needs a DNSSEC-validated MX RRset and usable TLSA at every
usable MX host. RFC 8461 2 lets DANE take precedence where it applies; it does not let a
weaker per-host fallback replace MTA-STS. Partial DANE (``dane``: Postfix falls back to
opportunistic TLS at hosts without TLSA), unusable TLSA (``encrypt``) and anything read
from an unsigned MX RRset (which an attacker on the path can forge to point at a host in
a signed zone of their own) all leave the MTA-STS ``secure match=...`` in force.
"""

from __future__ import annotations

from policyd.core import dane, sts
from policyd.core.evidence import (
    DnsStatus,
    Evidence,
    ProbeLevel,
    ProbeVerdict,
    StsEvidence,
    StsMode,
)
from policyd.core.profile import ColdSts, Fallback, Profile, VerifiedAs
from policyd.core.types import Policy, Rule, TlsLevel, Verdict, notfound, policy, temp

# DANE outcomes that leave some path unauthenticated: they decide only without a valid
# MTA-STS enforce policy (RFC 8461 2; see the module docstring).
_PARTIAL_DANE = (dane.DaneKind.DANE, dane.DaneKind.ENCRYPT)


def _fallback(fb: Fallback, rule: Rule, reason: str) -> Verdict:
    if fb is Fallback.NOTFOUND:
        return notfound(rule, reason)
    return policy(rule, reason, Policy(TlsLevel(fb.value)))


def decide(ev: Evidence, profile: Profile, now: float) -> Verdict:
    dest = ev.destination
    ov = ev.override
    if ov is not None and ov.active_at(now):
        # A parent-form override (.example.com) reaching a subdomain names itself.
        whose = "" if ov.key == dest.key else f" of {ov.key}"
        why = f"override{whose} by {ov.author or 'postmaster'}"
        if ov.comment:
            why += f": {ov.comment}"
        if ov.policy is None:
            return notfound(Rule.OVERRIDE, why)
        return policy(Rule.OVERRIDE, why, ov.policy)
    if dest.parent_form:
        return notfound(Rule.DEFAULT, "parent-domain form: no policy unless overridden")

    # A smart host's policy (RFC 8461 3.4) only where the profile wants it.
    sts_ev = ev.sts if profile.sts_smart_host or not dest.bracketed else StsEvidence()
    cached = sts_ev.policy
    enforce = (
        cached
        if cached is not None and cached.valid_at(now) and cached.mode is StsMode.ENFORCE
        else None
    )
    hosts_failed = ""
    passed_over = ""  # the DANE outcome an enforce policy outranks, for the reason
    if ev.dns is not None:
        outcome = dane.evaluate(ev.dns)
        kind = outcome.kind
        if kind is dane.DaneKind.TEMP:
            return temp(Rule.DNS_FAILURE, outcome.reason)
        # An unsigned "no mail here" may be forged like any unsigned MX answer: with an
        # enforce policy cached, Postfix still gets secure (and finds no MX itself if true).
        if kind is dane.DaneKind.NO_MAIL and (enforce is None or ev.dns.mx is DnsStatus.SECURE):
            return notfound(Rule.NO_MAIL, outcome.reason)
        if kind is dane.DaneKind.DANE_ONLY or (enforce is None and kind in _PARTIAL_DANE):
            level = TlsLevel(kind.value)
            return policy(Rule.DANE, "DANE: " + outcome.reason, Policy(level))
        if kind is dane.DaneKind.HOSTS_FAILED:
            hosts_failed = outcome.reason
        elif kind is not dane.DaneKind.NOT_APPLICABLE:
            passed_over = f"; DANE not on every path ({outcome.reason})"

    if enforce is not None:
        pol = sts.to_policy(dest.name, enforce, profile.sts_attributes)
        stale = f", refresh failed: {sts_ev.error}" if sts_ev.error else ""
        age = int(now - enforce.fetched_at)
        return policy(
            Rule.MTA_STS,
            f"MTA-STS enforce id={enforce.policy_id} mx={sts.describe_mx(enforce.mx)} "
            f"fetched {age}s ago{stale}{passed_over}",
            pol,
        )
    if sts_ev.pending and profile.sts_cold is ColdSts.TEMP:
        return temp(Rule.MTA_STS, "MTA-STS policy fetch still running")

    probe_verdict = _from_probe(ev, profile)
    if hosts_failed:
        # Some MX hosts are unusable for DANE (failed lookups) and no other host has
        # TLSA, so at every host that did not fail dane means may to Postfix: STARTTLS
        # can be stripped there. Any lower evidence of mandatory TLS (a probe's encrypt,
        # verify or secure) protects every path at least as well, even the failed host,
        # which encrypt would reach unauthenticated like the others (RFC review D13).
        # Without it, dane lets Postfix skip the failed hosts itself.
        if probe_verdict is not None and probe_verdict.strength >= TlsLevel.ENCRYPT.strength:
            return probe_verdict
        return policy(
            Rule.DANE, f"DANE: Postfix skips failing hosts: {hosts_failed}", Policy(TlsLevel.DANE)
        )
    if probe_verdict is not None:
        return probe_verdict
    note = ""
    if cached is not None and cached.mode is StsMode.TESTING:
        note = " (MTA-STS testing: not enforced)"
    return _fallback(profile.unknown, Rule.DEFAULT, "no DANE, MTA-STS or probe evidence" + note)


def _from_probe(ev: Evidence, profile: Profile) -> Verdict | None:
    state = ev.probe
    if state is None or state.level is None:
        return None
    held = ""
    if state.pending_names:
        held = (
            f", holding names against {','.join(state.pending_names)} seen {state.pending_count}x"
        )
    elif state.pending is not None:
        held = f", holding against {state.pending.value} seen {state.pending_count}x"
    if state.level is ProbeLevel.VERIFY:
        # The probe sent SNI (the MX host name) and judged what came back; Postfix sends
        # none unless told (smtp_tls_servername is empty), and a multi-tenant server may
        # present another certificate then. servername=hostname (Postfix >= 3.4) makes
        # Postfix ask for exactly what the probe verified.
        sni = (("servername", "hostname"),)
        if profile.probe_verified is VerifiedAs.SECURE and state.verified_names:
            pol = Policy(TlsLevel.SECURE, state.verified_names, sni)
        else:
            pol = Policy(TlsLevel.VERIFY, attrs=sni)
        return policy(Rule.PROBE, f"probe: every reachable MX verified{held}", pol)
    if state.level is ProbeLevel.ENCRYPT:
        bad = sorted(
            {
                f"{h.host} {h.verdict.value}"
                for h in state.hosts
                if h.verdict.reachable and h.verdict is not ProbeVerdict.VALID
            }
        )
        return policy(
            Rule.PROBE,
            f"probe: TLS everywhere, certificate not verified ({', '.join(bad)}){held}",
            Policy(TlsLevel.ENCRYPT),
        )
    no_tls = sorted({f"{h.host} {h.verdict.value}" for h in state.hosts if h.verdict.reachable})
    return _fallback(
        profile.probe_no_tls,
        Rule.PROBE,
        f"probe: an MX without working TLS ({', '.join(no_tls)}){held}",
    )
