"""DANE for SMTP (RFC 7672) decided from typed DNS evidence.

Rules, in short:

* The MX lookup failed (bogus, SERVFAIL, timeout): TEMP. Nothing is known, and a
  weaker answer is exactly the downgrade an attacker who breaks DNS wants.
* A host whose address or TLSA lookup failed cannot be used (RFC 7672 2.1.1, 2.2.2);
  if no usable host remains the destination must wait (TEMP). If some remain, the
  domain gets at least ``dane`` so that Postfix, doing its own DNSSEC lookups
  (``smtp_dns_support_level = dnssec``), skips the failing host rather than sending to
  it with a weaker policy. One broken host never blocks the others.
* Every usable host has a secure, usable TLSA RRset: ``dane-only`` (if the MX RRset is
  secure). Some do: ``dane`` (Postfix authenticates per host). A host with a
  DNSSEC-validated denial of any address is set aside: Postfix cannot use it.
* TLSA present at every usable host but none usable: ``encrypt`` (Postfix's own rule for
  unusable TLSA: mandatory TLS without authentication).
* An insecure MX RRset whose hosts live in signed zones with TLSA: ``dane``, never
  ``dane-only`` (RFC 7672 2.2.1 allows DANE for such hosts; Postfix's
  smtp_tls_dane_insecure_mx_policy does the same). An attacker who can forge the
  MX RRset can point it elsewhere, so the domain-wide guarantee is not claimed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from policyd.core.evidence import DnsEvidence, DnsStatus, MxHost, MxKind
from policyd.core.frozen import quick_init


class DaneKind(enum.Enum):
    NOT_APPLICABLE = "not-applicable"  # no DANE evidence: lower rules decide
    NO_MAIL = "no-mail"  # NXDOMAIN or null MX: nothing to deliver to
    TEMP = "temp"
    DANE_ONLY = "dane-only"
    DANE = "dane"
    ENCRYPT = "encrypt"
    HOSTS_FAILED = "hosts-failed"  # some hosts unusable, the rest without DANE


@quick_init
@dataclass(frozen=True, slots=True)
class DaneOutcome:
    kind: DaneKind
    reason: str


class _HostClass(enum.Enum):
    FAILED = "failed"
    DENIED = "denied"  # signed proof of no address: Postfix cannot and will not use it
    USABLE_TLSA = "usable-tlsa"
    UNUSABLE_TLSA = "unusable-tlsa"
    NO_DANE = "no-dane"


def _classify(host: MxHost) -> tuple[_HostClass, str]:
    if host.address is DnsStatus.FAILED:
        return _HostClass.FAILED, f"address lookup for {host.name} failed ({host.address_error})"
    if host.address is DnsStatus.INSECURE:
        return _HostClass.NO_DANE, f"{host.name} address is not DNSSEC-signed"
    if not host.addresses and host.tlsa is None:
        # A validated NXDOMAIN/NODATA for both families: nothing to connect to, so
        # nothing to authenticate. Postfix skips the host; it neither fails nor lacks
        # DANE (RFC review D17: it used to count as no-DANE and turn dane-only to dane).
        return _HostClass.DENIED, f"{host.name} has no address (DNSSEC-signed denial)"
    if host.tlsa is DnsStatus.FAILED:
        return _HostClass.FAILED, f"TLSA lookup for {host.name} failed ({host.tlsa_error})"
    if host.tlsa is not DnsStatus.SECURE or not host.tlsa_records:
        return _HostClass.NO_DANE, f"{host.name} has no signed TLSA"
    if any(r.usable for r in host.tlsa_records):
        return _HostClass.USABLE_TLSA, f"{host.name} has usable TLSA"
    return _HostClass.UNUSABLE_TLSA, f"{host.name} has only unusable TLSA"


def evaluate(dns: DnsEvidence) -> DaneOutcome:
    """Apply RFC 7672 to one destination's DNS evidence."""
    if dns.mx is DnsStatus.FAILED:
        return DaneOutcome(DaneKind.TEMP, dns.error or "MX lookup failed")
    if dns.kind is MxKind.NXDOMAIN:
        return DaneOutcome(DaneKind.NO_MAIL, "domain does not exist (NXDOMAIN)")
    if dns.kind is MxKind.NULL:
        return DaneOutcome(DaneKind.NO_MAIL, "null MX: the domain accepts no mail (RFC 7505)")
    if not dns.hosts:
        return DaneOutcome(DaneKind.NOT_APPLICABLE, "no MX hosts")

    classes = [(h, *_classify(h)) for h in dns.hosts]
    failed = [why for _, c, why in classes if c is _HostClass.FAILED]
    aside = (_HostClass.FAILED, _HostClass.DENIED)
    usable = [(h, c) for h, c, _ in classes if c not in aside]
    if not usable and failed:
        return DaneOutcome(DaneKind.TEMP, "no usable MX host: " + "; ".join(failed))
    if not usable:
        return DaneOutcome(DaneKind.NOT_APPLICABLE, "no MX host has an address")

    with_usable = [h.name for h, c in usable if c is _HostClass.USABLE_TLSA]
    with_tlsa = [h.name for h, c in usable if c is not _HostClass.NO_DANE]
    skipped = f"; skipped: {'; '.join(failed)}" if failed else ""
    mx_secure = dns.mx is DnsStatus.SECURE
    if with_usable and len(with_usable) == len(usable) and mx_secure:
        return DaneOutcome(
            DaneKind.DANE_ONLY,
            f"signed MX, usable TLSA at every MX host ({', '.join(with_usable)}){skipped}",
        )
    if with_usable:
        why = "MX RRset not signed" if not mx_secure else "not at every MX host"
        return DaneOutcome(
            DaneKind.DANE, f"usable TLSA at {', '.join(with_usable)}, {why}{skipped}"
        )
    # With a failed host, encrypt would let Postfix use that host unauthenticated: the
    # failure may hide usable TLSA. Fall through to dane, which makes Postfix skip it.
    if with_tlsa and len(with_tlsa) == len(usable) and not failed:
        return DaneOutcome(
            DaneKind.ENCRYPT,
            f"signed TLSA but none usable at {', '.join(with_tlsa)}{skipped}",
        )
    if with_tlsa:
        return DaneOutcome(
            DaneKind.DANE,
            f"signed but unusable TLSA at {', '.join(with_tlsa)} (Postfix encrypts there){skipped}",
        )
    if failed:
        return DaneOutcome(DaneKind.HOSTS_FAILED, "; ".join(failed))
    return DaneOutcome(DaneKind.NOT_APPLICABLE, "no signed TLSA at any MX host")
