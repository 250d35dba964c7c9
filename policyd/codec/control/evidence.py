"""The evidence parts of control results (``explain``, ``probe --wait``, ``report``).

Each is a frozen value with ``of`` (from the core values, at the daemon), ``to_json`` and
``from_json`` (at ``policyctl``): the one schema of the ``policyctl --json`` documents in
man/policyctl.8. Times are seconds since the epoch; every ``age`` is computed from the
``now`` given to ``of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from policyd.codec import postfix_policy
from policyd.codec.control.fields import Fields
from policyd.codec.control.framing import JsonObject, JsonValue
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
class TlsaDoc:
    usage: int
    selector: int
    mtype: int
    data: str  # hex
    usable: bool

    @classmethod
    def of(cls, r: Tlsa) -> Self:
        return cls(r.usage, r.selector, r.mtype, r.data.hex(), r.usable)

    def to_json(self) -> JsonObject:
        return {
            "usage": self.usage,
            "selector": self.selector,
            "mtype": self.mtype,
            "data": self.data,
            "usable": self.usable,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("tlsa", value)
        return cls(
            f.integer("usage"), f.integer("selector"), f.integer("mtype"), f.text("data"),
            f.flag("usable"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class HostDoc:
    name: str
    preference: int
    address_status: DnsStatus
    addresses: tuple[str, ...]
    address_error: str
    tlsa_status: DnsStatus | None  # None: TLSA not looked up
    tlsa: tuple[TlsaDoc, ...]
    tlsa_error: str

    @classmethod
    def of(cls, h: MxHost) -> Self:
        tlsa = tuple(TlsaDoc.of(r) for r in h.tlsa_records)
        return cls(
            h.name, h.preference, h.address, h.addresses, h.address_error, h.tlsa, tlsa,
            h.tlsa_error,
        )  # fmt: skip

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "preference": self.preference,
            "address_status": self.address_status.value,
            "addresses": list(self.addresses),
            "address_error": self.address_error,
            "tlsa_status": None if self.tlsa_status is None else self.tlsa_status.value,
            "tlsa": [r.to_json() for r in self.tlsa],
            "tlsa_error": self.tlsa_error,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("host", value)
        return cls(
            f.text("name"),
            f.integer("preference"),
            f.enum("address_status", DnsStatus),
            f.texts("addresses"),
            f.text("address_error"),
            f.opt_enum("tlsa_status", DnsStatus),
            f.objs("tlsa", TlsaDoc.from_json),
            f.text("tlsa_error"),
        )


@dataclass(frozen=True, slots=True)
class DnsDoc:
    mx_status: DnsStatus
    kind: MxKind
    error: str
    fetched_at: float | None
    age: float | None
    expires_at: float | None
    hosts: tuple[HostDoc, ...]

    @classmethod
    def of(cls, dns: DnsEvidence | None, now: float) -> Self | None:
        if dns is None:
            return None
        return cls(
            dns.mx, dns.kind, dns.error, dns.fetched_at or None, age(now, dns.fetched_at),
            dns.expires_at or None, tuple(HostDoc.of(h) for h in dns.hosts),
        )  # fmt: skip

    def to_json(self) -> JsonObject:
        return {
            "mx_status": self.mx_status.value,
            "kind": self.kind.value,
            "error": self.error,
            "fetched_at": self.fetched_at,
            "age": self.age,
            "expires_at": self.expires_at,
            "hosts": [h.to_json() for h in self.hosts],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("dns", value)
        return cls(
            f.enum("mx_status", DnsStatus),
            f.enum("kind", MxKind),
            f.text("error"),
            f.opt_number("fetched_at"),
            f.opt_number("age"),
            f.opt_number("expires_at"),
            f.objs("hosts", HostDoc.from_json),
        )


@dataclass(frozen=True, slots=True)
class StsPolicyDoc:
    id: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float
    age: float | None
    expires_at: float
    valid: bool

    def to_json(self) -> JsonObject:
        return {
            "id": self.id,
            "mode": self.mode.value,
            "mx": list(self.mx),
            "max_age": self.max_age,
            "fetched_at": self.fetched_at,
            "age": self.age,
            "expires_at": self.expires_at,
            "valid": self.valid,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("mta_sts.policy", value)
        return cls(
            f.text("id"), f.enum("mode", StsMode), f.texts("mx"), f.integer("max_age"),
            f.number("fetched_at"), f.opt_number("age"), f.number("expires_at"), f.flag("valid"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StsDoc:
    policy: StsPolicyDoc | None
    error: str
    pending: bool

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

    def to_json(self) -> JsonObject:
        policy = None if self.policy is None else self.policy.to_json()
        return {"policy": policy, "error": self.error, "pending": self.pending}

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("mta_sts", value)
        return cls(f.opt_obj("policy", StsPolicyDoc.from_json), f.text("error"), f.flag("pending"))


@dataclass(frozen=True, slots=True)
class ProbeHostDoc:
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

    @classmethod
    def of(cls, h: ProbeHost, now: float) -> Self:
        return cls(
            h.host, h.address, h.verdict, h.detail, h.protocol, h.cipher, h.leaf_sha256,
            h.spki_sha256, h.probed_at or None, age(now, h.probed_at),
        )  # fmt: skip

    def to_json(self) -> JsonObject:
        return {
            "host": self.host,
            "address": self.address,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "protocol": self.protocol,
            "cipher": self.cipher,
            "leaf_sha256": self.leaf_sha256,
            "spki_sha256": self.spki_sha256,
            "probed_at": self.probed_at,
            "age": self.age,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("probe host", value)
        return cls(
            f.text("host"), f.text("address"), f.enum("verdict", ProbeVerdict),
            f.text("detail"), f.text("protocol"), f.text("cipher"), f.text("leaf_sha256"),
            f.text("spki_sha256"), f.opt_number("probed_at"), f.opt_number("age"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DampingDoc:
    held_level: ProbeLevel | None
    pending: ProbeLevel
    pending_names: tuple[str, ...]
    count: int
    since: float | None
    age: float | None

    def to_json(self) -> JsonObject:
        return {
            "held_level": None if self.held_level is None else self.held_level.value,
            "pending": self.pending.value,
            "pending_names": list(self.pending_names),
            "count": self.count,
            "since": self.since,
            "age": self.age,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("damping", value)
        return cls(
            f.opt_enum("held_level", ProbeLevel), f.enum("pending", ProbeLevel),
            f.texts("pending_names"), f.integer("count"), f.opt_number("since"),
            f.opt_number("age"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProbeDoc:
    level: ProbeLevel | None
    verified_names: tuple[str, ...]
    probed_at: float | None
    age: float | None
    damping: DampingDoc | None
    hosts: tuple[ProbeHostDoc, ...]

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

    def to_json(self) -> JsonObject:
        return {
            "level": None if self.level is None else self.level.value,
            "verified_names": list(self.verified_names),
            "probed_at": self.probed_at,
            "age": self.age,
            "damping": None if self.damping is None else self.damping.to_json(),
            "hosts": [h.to_json() for h in self.hosts],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("probe", value)
        return cls(
            f.opt_enum("level", ProbeLevel), f.texts("verified_names"),
            f.opt_number("probed_at"), f.opt_number("age"),
            f.opt_obj("damping", DampingDoc.from_json), f.objs("hosts", ProbeHostDoc.from_json),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class OverrideDoc:
    destination: str
    policy: str  # as Postfix reads it; NOTFOUND for "no policy"
    expires_at: float | None
    expires_in: float | None
    active: bool
    comment: str
    author: str
    created_at: float | None
    age: float | None

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

    def to_json(self) -> JsonObject:
        return {
            "destination": self.destination,
            "policy": self.policy,
            "expires_at": self.expires_at,
            "expires_in": self.expires_in,
            "active": self.active,
            "comment": self.comment,
            "author": self.author,
            "created_at": self.created_at,
            "age": self.age,
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Self:
        f = Fields("override", value)
        return cls(
            f.text("destination"), f.text("policy"), f.opt_number("expires_at"),
            f.opt_number("expires_in"), f.flag("active"), f.text("comment"), f.text("author"),
            f.opt_number("created_at"), f.opt_number("age"),
        )  # fmt: skip
