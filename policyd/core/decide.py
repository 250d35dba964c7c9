"""The decision order: override > DANE > MTA-STS enforce > probe evidence > default.

Pure: evidence and ``now`` in, a :class:`Verdict` out. A lookup failure where DANE or a
cached MTA-STS enforce policy may apply never yields a weaker level than the same
evidence without the failure (tests/unit/test_decide.py checks that property).
"""

from __future__ import annotations

from policyd.core import dane, sts
from policyd.core.evidence import Evidence, ProbeLevel, ProbeVerdict, StsMode
from policyd.core.profile import ColdSts, Fallback, Profile, VerifiedAs
from policyd.core.types import Policy, Rule, TlsLevel, Verdict, notfound, policy, temp


def _fallback(fb: Fallback, rule: Rule, reason: str) -> Verdict:
    if fb is Fallback.NOTFOUND:
        return notfound(rule, reason)
    return policy(rule, reason, Policy(TlsLevel(fb.value)))


def decide(ev: Evidence, profile: Profile, now: float) -> Verdict:
    dest = ev.destination
    ov = ev.override
    if ov is not None and ov.active_at(now):
        why = f"override by {ov.author or 'postmaster'}"
        if ov.comment:
            why += f": {ov.comment}"
        if ov.policy is None:
            return notfound(Rule.OVERRIDE, why)
        return policy(Rule.OVERRIDE, why, ov.policy)
    if dest.parent_form:
        return notfound(Rule.DEFAULT, "parent-domain form: no policy unless overridden")

    hosts_failed = ""
    if ev.dns is not None:
        outcome = dane.evaluate(ev.dns)
        kind = outcome.kind
        if kind is dane.DaneKind.TEMP:
            return temp(Rule.DNS_FAILURE, outcome.reason)
        if kind is dane.DaneKind.NO_MAIL:
            return notfound(Rule.NO_MAIL, outcome.reason)
        if kind in (dane.DaneKind.DANE_ONLY, dane.DaneKind.DANE, dane.DaneKind.ENCRYPT):
            level = TlsLevel(kind.value)
            return policy(Rule.DANE, "DANE: " + outcome.reason, Policy(level))
        if kind is dane.DaneKind.HOSTS_FAILED:
            hosts_failed = outcome.reason

    sts_ev = ev.sts
    cached = sts_ev.policy
    if cached is not None and cached.valid_at(now) and cached.mode is StsMode.ENFORCE:
        pol = sts.to_policy(dest.name, cached, profile.sts_attributes)
        stale = f", refresh failed: {sts_ev.error}" if sts_ev.error else ""
        age = int(now - cached.fetched_at)
        return policy(
            Rule.MTA_STS,
            f"MTA-STS enforce id={cached.policy_id} mx={','.join(cached.mx)} "
            f"fetched {age}s ago{stale}",
            pol,
        )
    if sts_ev.pending and profile.sts_cold is ColdSts.TEMP:
        return temp(Rule.MTA_STS, "MTA-STS policy fetch still running")

    probe_verdict = _from_probe(ev, profile)
    if hosts_failed:
        # Some MX hosts are unusable for DANE (failed lookups). Keep an authenticated
        # level from lower evidence, else let Postfix skip those hosts itself with dane.
        if probe_verdict is not None and probe_verdict.strength >= TlsLevel.DANE.strength:
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
