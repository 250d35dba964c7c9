"""The evidence parts of control results (``explain``, ``probe --wait``, ``report``).

Each is a frozen value with ``of`` (from the core values, at the daemon) and its ``WIRE``
schema, which ``to_json`` and ``from_json`` (at ``policyctl``) walk: the one schema of the
``policyctl --json`` documents in man/policyctl.8. Times are seconds since the epoch; every
``age`` is computed from the ``now`` given to ``of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from policyd.codec import postfix_policy
from policyd.codec.control.fields import (
    FLAG,
    INT,
    NUMBER,
    TEXT,
    TEXTS,
    Field,
    WireDoc,
    enum_of,
    list_of,
    nested,
    optional,
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


@dataclass(frozen=True, slots=True)
class TlsaDoc(WireDoc):
    usage: int
    selector: int
    mtype: int
    data: str  # hex
    usable: bool

    WHAT = "tlsa"
    WIRE = (
        Field("usage", INT),
        Field("selector", INT),
        Field("mtype", INT),
        Field("data", TEXT),
        Field("usable", FLAG),
    )

    @classmethod
    def of(cls, r: Tlsa) -> Self:
        return cls(r.usage, r.selector, r.mtype, r.data.hex(), r.usable)


@dataclass(frozen=True, slots=True)
class HostDoc(WireDoc):
    name: str
    preference: int
    address_status: DnsStatus
    addresses: tuple[str, ...]
    address_error: str
    tlsa_status: DnsStatus | None  # None: TLSA not looked up
    tlsa: tuple[TlsaDoc, ...]
    tlsa_error: str

    WHAT = "host"
    WIRE = (
        Field("name", TEXT),
        Field("preference", INT),
        Field("address_status", enum_of(DnsStatus)),
        Field("addresses", TEXTS),
        Field("address_error", TEXT),
        Field("tlsa_status", optional(enum_of(DnsStatus))),
        Field("tlsa", list_of(nested(TlsaDoc))),
        Field("tlsa_error", TEXT),
    )

    @classmethod
    def of(cls, h: MxHost) -> Self:
        tlsa = tuple(TlsaDoc.of(r) for r in h.tlsa_records)
        return cls(
            h.name, h.preference, h.address, h.addresses, h.address_error, h.tlsa, tlsa,
            h.tlsa_error,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DnsDoc(WireDoc):
    mx_status: DnsStatus
    kind: MxKind
    error: str
    fetched_at: float | None
    age: float | None
    expires_at: float | None
    hosts: tuple[HostDoc, ...]

    WHAT = "dns"
    WIRE = (
        Field("mx_status", enum_of(DnsStatus)),
        Field("kind", enum_of(MxKind)),
        Field("error", TEXT),
        Field("fetched_at", optional(NUMBER)),
        Field("age", optional(NUMBER)),
        Field("expires_at", optional(NUMBER)),
        Field("hosts", list_of(nested(HostDoc))),
    )

    @classmethod
    def of(cls, dns: DnsEvidence | None, now: float) -> Self | None:
        if dns is None:
            return None
        return cls(
            dns.mx, dns.kind, dns.error, dns.fetched_at or None, age(now, dns.fetched_at),
            dns.expires_at or None, tuple(HostDoc.of(h) for h in dns.hosts),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StsPolicyDoc(WireDoc):
    id: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float
    age: float | None
    expires_at: float
    valid: bool

    WHAT = "mta_sts.policy"
    WIRE = (
        Field("id", TEXT),
        Field("mode", enum_of(StsMode)),
        Field("mx", TEXTS),
        Field("max_age", INT),
        Field("fetched_at", NUMBER),
        Field("age", optional(NUMBER)),
        Field("expires_at", NUMBER),
        Field("valid", FLAG),
    )


@dataclass(frozen=True, slots=True)
class StsDoc(WireDoc):
    policy: StsPolicyDoc | None
    error: str
    pending: bool

    WHAT = "mta_sts"
    WIRE = (
        Field("policy", optional(nested(StsPolicyDoc))),
        Field("error", TEXT),
        Field("pending", FLAG),
    )

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


@dataclass(frozen=True, slots=True)
class ProbeHostDoc(WireDoc):
    host: str
    address: str
    verdict: ProbeVerdict
    detail: str
    protocol: str
    cipher: str
    leaf_sha256: str
    spki_sha256: str
    probed_at: float | None
    age: float | None

    WHAT = "probe host"
    WIRE = (
        Field("host", TEXT),
        Field("address", TEXT),
        Field("verdict", enum_of(ProbeVerdict)),
        Field("detail", TEXT),
        Field("protocol", TEXT),
        Field("cipher", TEXT),
        Field("leaf_sha256", TEXT),
        Field("spki_sha256", TEXT),
        Field("probed_at", optional(NUMBER)),
        Field("age", optional(NUMBER)),
    )

    @classmethod
    def of(cls, h: ProbeHost, now: float) -> Self:
        return cls(
            h.host, h.address, h.verdict, h.detail, h.protocol, h.cipher, h.leaf_sha256,
            h.spki_sha256, h.probed_at or None, age(now, h.probed_at),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DampingDoc(WireDoc):
    held_level: ProbeLevel | None
    pending: ProbeLevel
    pending_names: tuple[str, ...]
    count: int
    since: float | None
    age: float | None

    WHAT = "damping"
    WIRE = (
        Field("held_level", optional(enum_of(ProbeLevel))),
        Field("pending", enum_of(ProbeLevel)),
        Field("pending_names", TEXTS),
        Field("count", INT),
        Field("since", optional(NUMBER)),
        Field("age", optional(NUMBER)),
    )


@dataclass(frozen=True, slots=True)
class ProbeDoc(WireDoc):
    level: ProbeLevel | None
    verified_names: tuple[str, ...]
    probed_at: float | None
    age: float | None
    damping: DampingDoc | None
    hosts: tuple[ProbeHostDoc, ...]

    WHAT = "probe"
    WIRE = (
        Field("level", optional(enum_of(ProbeLevel))),
        Field("verified_names", TEXTS),
        Field("probed_at", optional(NUMBER)),
        Field("age", optional(NUMBER)),
        Field("damping", optional(nested(DampingDoc))),
        Field("hosts", list_of(nested(ProbeHostDoc))),
    )

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


@dataclass(frozen=True, slots=True)
class OverrideDoc(WireDoc):
    destination: str
    policy: str  # as Postfix reads it; NOTFOUND for "no policy"
    expires_at: float | None
    expires_in: float | None
    active: bool
    comment: str
    author: str
    created_at: float | None
    age: float | None

    WHAT = "override"
    WIRE = (
        Field("destination", TEXT),
        Field("policy", TEXT),
        Field("expires_at", optional(NUMBER)),
        Field("expires_in", optional(NUMBER)),
        Field("active", FLAG),
        Field("comment", TEXT),
        Field("author", TEXT),
        Field("created_at", optional(NUMBER)),
        Field("age", optional(NUMBER)),
    )

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
