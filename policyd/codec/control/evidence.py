"""The evidence parts of control results (``explain``, ``probe --wait``, ``report``).

Each is a frozen value with ``of`` (from the core values, at the daemon) and attributes
declared with their JSON keys (:func:`~policyd.codec.control.fields.wire`), which
``to_json`` and ``from_json`` (at ``policyctl``) walk: the one schema of the
``policyctl --json`` documents in man/policyctl.8. Times are seconds since the epoch; every
``age`` is computed from the ``now`` given to ``of``.
"""

from __future__ import annotations

from typing import Self

from policyd.codec import postfix_policy
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    WireDoc,
    enum_of,
    list_of,
    nested,
    optional,
    wire,
    wire_doc,
)
from policyd.core.evidence import (
    DnsEvidence,
    DnsStatus,
    MxHost,
    MxKind,
    Override,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
    StsEvidence,
    StsMode,
    Tlsa,
)


def age(now: float, at: float) -> float | None:
    return None if not at else round(now - at, 1)


@wire_doc
class TlsaDoc(WireDoc):
    usage: int = wire("usage", INT)
    selector: int = wire("selector", INT)
    mtype: int = wire("mtype", INT)
    data: str = wire("data", TEXT)  # hex
    usable: bool = wire("usable", FLAG)

    WHAT = "tlsa"

    @classmethod
    def of(cls, r: Tlsa) -> Self:
        return cls(r.usage, r.selector, r.mtype, r.data.hex(), r.usable)


@wire_doc
class HostDoc(WireDoc):
    name: str = wire("name", TEXT)
    preference: int = wire("preference", INT)
    address_status: DnsStatus = wire("address_status", enum_of(DnsStatus))
    addresses: tuple[str, ...] = wire("addresses", TEXTS)
    address_error: str = wire("address_error", TEXT)
    # None: TLSA not looked up
    tlsa_status: DnsStatus | None = wire("tlsa_status", optional(enum_of(DnsStatus)))
    tlsa: tuple[TlsaDoc, ...] = wire("tlsa", list_of(nested(TlsaDoc)))
    tlsa_error: str = wire("tlsa_error", TEXT)

    WHAT = "host"

    @classmethod
    def of(cls, h: MxHost) -> Self:
        tlsa = tuple(TlsaDoc.of(r) for r in h.tlsa_records)
        return cls(
            h.name, h.preference, h.address, h.addresses, h.address_error, h.tlsa, tlsa,
            h.tlsa_error,
        )  # fmt: skip


@wire_doc
class DnsDoc(WireDoc):
    mx_status: DnsStatus = wire("mx_status", enum_of(DnsStatus))
    kind: MxKind = wire("kind", enum_of(MxKind))
    error: str = wire("error", TEXT)
    fetched_at: float | None = wire("fetched_at", optional(NUMBER))
    age: float | None = wire("age", optional(NUMBER))
    expires_at: float | None = wire("expires_at", optional(NUMBER))
    hosts: tuple[HostDoc, ...] = wire("hosts", list_of(nested(HostDoc)))

    WHAT = "dns"

    @classmethod
    def of(cls, dns: DnsEvidence | None, now: float) -> Self | None:
        if dns is None:
            return None
        return cls(
            dns.mx, dns.kind, dns.error, dns.fetched_at or None, age(now, dns.fetched_at),
            dns.expires_at or None, tuple(HostDoc.of(h) for h in dns.hosts),
        )  # fmt: skip


@wire_doc
class StsPolicyDoc(WireDoc):
    id: str = wire("id", TEXT)
    mode: StsMode = wire("mode", enum_of(StsMode))
    mx: tuple[str, ...] = wire("mx", TEXTS)
    max_age: int = wire("max_age", INT)
    fetched_at: float = wire("fetched_at", NUMBER)
    age: float | None = wire("age", optional(NUMBER))
    expires_at: float = wire("expires_at", NUMBER)
    valid: bool = wire("valid", FLAG)

    WHAT = "mta_sts.policy"


@wire_doc
class StsDoc(WireDoc):
    policy: StsPolicyDoc | None = wire("policy", optional(nested(StsPolicyDoc)))
    error: str = wire("error", TEXT)
    pending: bool = wire("pending", FLAG)

    WHAT = "mta_sts"

    @classmethod
    def of(cls, sts: StsEvidence, now: float) -> Self:
        pol = sts.policy
        doc = None
        if pol is not None:
            doc = StsPolicyDoc(
                pol.policy_id, pol.mode, pol.mx, pol.max_age, pol.fetched_at,
                age(now, pol.fetched_at), pol.expires_at, pol.valid_at(now),
            )  # fmt: skip
        return cls(doc, sts.error, sts.pending)


@wire_doc
class ProbeHostDoc(WireDoc):
    host: str = wire("host", TEXT)
    address: str = wire("address", TEXT)
    verdict: ProbeVerdict = wire("verdict", enum_of(ProbeVerdict))
    detail: str = wire("detail", TEXT)
    protocol: str = wire("protocol", TEXT)
    cipher: str = wire("cipher", TEXT)
    leaf_sha256: str = wire("leaf_sha256", TEXT)
    spki_sha256: str = wire("spki_sha256", TEXT)
    probed_at: float | None = wire("probed_at", optional(NUMBER))
    age: float | None = wire("age", optional(NUMBER))

    WHAT = "probe host"

    @classmethod
    def of(cls, h: ProbeHost, now: float) -> Self:
        return cls(
            h.host, h.address, h.verdict, h.detail, h.protocol, h.cipher, h.leaf_sha256,
            h.spki_sha256, h.probed_at or None, age(now, h.probed_at),
        )  # fmt: skip


@wire_doc
class DampingDoc(WireDoc):
    held_level: ProbeLevel | None = wire("held_level", optional(enum_of(ProbeLevel)))
    pending: ProbeLevel = wire("pending", enum_of(ProbeLevel))
    pending_names: tuple[str, ...] = wire("pending_names", TEXTS)
    count: int = wire("count", INT)
    since: float | None = wire("since", optional(NUMBER))
    age: float | None = wire("age", optional(NUMBER))

    WHAT = "damping"


@wire_doc
class ProbeDoc(WireDoc):
    level: ProbeLevel | None = wire("level", optional(enum_of(ProbeLevel)))
    verified_names: tuple[str, ...] = wire("verified_names", TEXTS)
    probed_at: float | None = wire("probed_at", optional(NUMBER))
    age: float | None = wire("age", optional(NUMBER))
    damping: DampingDoc | None = wire("damping", optional(nested(DampingDoc)))
    hosts: tuple[ProbeHostDoc, ...] = wire("hosts", list_of(nested(ProbeHostDoc)))

    WHAT = "probe"

    @classmethod
    def of(cls, state: ProbeState | None, now: float) -> Self | None:
        if state is None:
            return None
        damping = None
        if state.pending is not None:
            damping = DampingDoc(
                state.level, state.pending, state.pending_names, state.pending_count,
                state.pending_since or None, age(now, state.pending_since),
            )  # fmt: skip
        return cls(
            state.level, state.verified_names, state.probed_at or None,
            age(now, state.probed_at), damping,
            tuple(ProbeHostDoc.of(h, now) for h in state.hosts),
        )  # fmt: skip


@wire_doc
class OverrideDoc(WireDoc):
    destination: str = wire("destination", TEXT)
    policy: str = wire("policy", TEXT)  # as Postfix reads it; NOTFOUND for "no policy"
    expires_at: float | None = wire("expires_at", optional(NUMBER))
    expires_in: float | None = wire("expires_in", optional(NUMBER))
    active: bool = wire("active", FLAG)
    comment: str = wire("comment", TEXT)
    author: str = wire("author", TEXT)
    created_at: float | None = wire("created_at", optional(NUMBER))
    age: float | None = wire("age", optional(NUMBER))

    WHAT = "override"

    @classmethod
    def of(cls, ov: Override, now: float) -> Self:
        return cls(
            ov.key,
            "NOTFOUND" if ov.policy is None else postfix_policy.render(ov.policy),
            ov.expires_at,
            None if ov.expires_at is None else round(ov.expires_at - now, 1),
            ov.active_at(now),
            ov.comment,
            ov.author,
            ov.created_at or None,
            age(now, ov.created_at),
        )
