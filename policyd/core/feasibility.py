"""Can the enforced policy be met right now? The comparison behind ``policyctl``'s ``check``.

The milter (policyd-milter(8)) asks this at RCPT or end-of-message time so that a
postmaster learns about a destination Postfix is going to defer *before* the message sits
in the queue. Pure: a verdict and the evidence behind it in, one line out (None: no
problem known).

Every rule is conservative, because the milter may turn a problem into a 4xx reply: a
problem is reported only when *every* MX host is known to fail, never when one of several
fails (Postfix then delivers to another) and never from missing evidence.

* MTA-STS enforce (RFC 8461 4.1): none of the MX hosts matches the policy's ``mx``
  patterns, so a compliant sender has nowhere to deliver.
* DANE (``dane``/``dane-only``, RFC 7672 3.1): for every MX host the latest probe saw a
  certificate, and its SHA-256 digests (certificate for selector 0, public key for
  selector 1) match none of the host's DANE-EE (usage 3) SHA-256 (matching type 1) TLSA
  records. A host with DANE-TA (usage 2) or other digest types cannot be judged from the
  probe and counts as fine; so does a host without usable TLSA under ``dane``.
* An override demanding authentication (``verify``, ``secure``, ``fingerprint``,
  ``dane``, ``dane-only``): the latest probe of every reachable MX address failed it.
  ``fingerprint`` compares the probe's SHA-256 digests with the ``match=`` list; the DANE
  levels use the TLSA rule above; ``verify``/``secure`` count a certificate error
  (expired, untrusted, ...) or missing TLS, and a name mismatch only for ``verify``
  without ``match=`` (other ``match=`` patterns may accept a name the probe did not check).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from policyd.core.evidence import (
    Evidence,
    MxHost,
    ProbeHost,
    ProbeVerdict,
    StsMode,
    StsPolicy,
    TlsaMatchingType,
    TlsaSelector,
    TlsaUsage,
)
from policyd.core.names import fold
from policyd.core.sts import any_mx_matches
from policyd.core.types import Outcome, Policy, Rule, TlsLevel, Verdict

SHA256_HEX: Final = 64  # hex digits of a SHA-256 digest
MAX_NAMES_SHOWN: Final = 4  # host names or patterns quoted in one problem line

# Levels for which Postfix must authenticate the server before it sends mail.
AUTHENTICATED: Final = frozenset(
    {TlsLevel.VERIFY, TlsLevel.SECURE, TlsLevel.FINGERPRINT, TlsLevel.DANE, TlsLevel.DANE_ONLY}
)
# Probe verdicts that fail any PKIX verification, whatever match= says.
_CERT_FAILURES: Final = frozenset(
    {
        ProbeVerdict.EXPIRED,
        ProbeVerdict.NOT_YET_VALID,
        ProbeVerdict.SELF_SIGNED,
        ProbeVerdict.UNKNOWN_ISSUER,
        ProbeVerdict.BAD_KEY_OR_SIGNATURE,
        ProbeVerdict.INVALID,
        ProbeVerdict.LEGACY_TLS,
        ProbeVerdict.NO_STARTTLS,
        ProbeVerdict.TLS_INTOLERANT,
    }
)


def hex_digest(text: str) -> str:
    """A digest as the probe or Postfix writes it (``AB:CD:...``) as plain lower-case hex."""
    return text.replace(":", "").strip().lower()


def _names(items: Iterable[str]) -> str:
    listed = list(items)
    shown = ", ".join(listed[:MAX_NAMES_SHOWN])
    more = len(listed) - MAX_NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# -- MTA-STS ---------------------------------------------------------------------------


def sts_problem(policy: StsPolicy, hosts: tuple[MxHost, ...]) -> str | None:
    """RFC 8461 4.1: an enforce policy whose mx patterns match no MX host."""
    if policy.mode is not StsMode.ENFORCE or not hosts:
        return None
    if any_mx_matches(policy, (h.name for h in hosts)):
        return None
    return (
        f"MTA-STS enforce: no MX host ({_names(h.name for h in hosts)}) "
        f"matches the policy's mx patterns ({_names(policy.mx)})"
    )


# -- DANE ------------------------------------------------------------------------------


def _seen(probes: tuple[ProbeHost, ...], host: str) -> list[ProbeHost]:
    """The host's probed addresses that presented a certificate."""
    return [p for p in probes if fold(p.host) == host and (p.leaf_sha256 or p.spki_sha256)]


def tlsa_mismatch(host: MxHost, probes: tuple[ProbeHost, ...]) -> bool:
    """True when the probe saw certificates at ``host`` and all of them are known not to
    match its TLSA RRset. False when they match or when the probe cannot tell."""
    usable = [r for r in host.tlsa_records if r.usable]
    if not usable:
        return False
    comparable = [
        r
        for r in usable
        if r.usage == TlsaUsage.DANE_EE
        and r.mtype == TlsaMatchingType.SHA256
        and r.selector in (TlsaSelector.CERT, TlsaSelector.SPKI)
    ]
    if len(comparable) < len(usable):
        return False  # DANE-TA or another digest: needs the chain, not just two digests
    seen = _seen(probes, host.name)
    if not seen:
        return False
    for probe in seen:
        digests: dict[int, str] = {
            TlsaSelector.CERT: hex_digest(probe.leaf_sha256),
            TlsaSelector.SPKI: hex_digest(probe.spki_sha256),
        }
        if any(digests[r.selector] == r.data.hex() for r in comparable):
            return False
    return True


def dane_problem(ev: Evidence) -> str | None:
    """Every MX host presented a certificate that matches none of its DANE-EE TLSA."""
    if ev.dns is None or not ev.dns.hosts or ev.probe is None:
        return None
    hosts = ev.dns.hosts
    if not all(tlsa_mismatch(h, ev.probe.hosts) for h in hosts):
        return None
    return (
        f"DANE: the certificate the latest probe saw at {_names(h.name for h in hosts)} "
        "matches no TLSA record"
    )


# -- overrides -------------------------------------------------------------------------


def _verification_fails(policy: Policy, probe: ProbeHost) -> bool:
    if policy.level is TlsLevel.FINGERPRINT:
        wanted = {hex_digest(m) for m in policy.match}
        if not probe.leaf_sha256 and not probe.spki_sha256:
            return probe.verdict in _CERT_FAILURES  # no TLS at all: nothing to pin
        seen = {hex_digest(probe.leaf_sha256), hex_digest(probe.spki_sha256)}
        return not (wanted & seen)
    if probe.verdict in _CERT_FAILURES:
        return True
    return (
        probe.verdict is ProbeVerdict.NAME_MISMATCH
        and policy.level is TlsLevel.VERIFY
        and not policy.match
    )


def override_problem(policy: Policy, ev: Evidence) -> str | None:
    """An override demanding authentication that the latest probe says every host fails."""
    if policy.level not in AUTHENTICATED:
        return None
    if policy.level in (TlsLevel.DANE, TlsLevel.DANE_ONLY):
        found = dane_problem(ev)
        return None if found is None else f"override {policy.level.value}: {found}"
    if policy.level is TlsLevel.FINGERPRINT and not all(
        len(hex_digest(m)) == SHA256_HEX for m in policy.match
    ):
        return None  # not SHA-256 (smtp_tls_fingerprint_digest): the probe cannot compare
    if ev.probe is None:
        return None
    reachable = [p for p in ev.probe.hosts if p.verdict.reachable]
    if not reachable or not all(_verification_fails(policy, p) for p in reachable):
        return None
    seen = sorted({f"{p.host} {p.verdict.value}" for p in reachable})
    what = "fingerprint matches" if policy.level is TlsLevel.FINGERPRINT else "verification"
    return f"override {policy.level.value}: the latest probe failed {what} at {_names(seen)}"


# -- the verdict as a whole ------------------------------------------------------------


def problem(verdict: Verdict, ev: Evidence, now: float) -> str | None:
    """Why ``verdict`` cannot currently be met, from ``ev``; None when nothing is known
    against it. ``ev`` should carry DNS and probe evidence even when an override decided."""
    if verdict.outcome is not Outcome.POLICY or verdict.policy is None:
        return None
    policy = verdict.policy
    if verdict.rule is Rule.OVERRIDE:
        return override_problem(policy, ev)
    if verdict.rule is Rule.DANE and policy.level in (TlsLevel.DANE, TlsLevel.DANE_ONLY):
        return dane_problem(ev)
    if verdict.rule is Rule.MTA_STS:
        cached = ev.sts.policy
        if cached is None or not cached.valid_at(now) or ev.dns is None:
            return None
        return sts_problem(cached, ev.dns.hosts)
    return None
