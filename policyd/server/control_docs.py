"""Evidence, verdicts and overrides as the JSON documents of the control protocol.

These are the ``policyctl --json`` shapes described in man/policyctl.8; times are seconds
since the epoch, and every ``age`` is computed from the ``now`` passed in.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from policyd.codec import postfix_policy
from policyd.codec.control import JsonObject, JsonValue
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    Evidence,
    MxHost,
    Override,
    ProbeHost,
    ProbeState,
    StsEvidence,
)
from policyd.core.report import Report
from policyd.core.types import Verdict
from policyd.service import level_text, render_reply

# -- evidence as JSON --------------------------------------------------------------------


def _age(now: float, at: float) -> float | None:
    return None if not at else round(now - at, 1)


def verdict_doc(verdict: Verdict) -> JsonObject:
    return {
        "level": level_text(verdict),
        "reply": render_reply(verdict).decode("utf-8", "replace").rstrip(),
        "rule": verdict.rule.value,
        "reason": verdict.reason,
    }


def host_doc(host: MxHost) -> JsonObject:
    return {
        "name": host.name,
        "preference": host.preference,
        "address_status": host.address.value,
        "addresses": list(host.addresses),
        "address_error": host.address_error,
        "tlsa_status": None if host.tlsa is None else host.tlsa.value,
        "tlsa": [
            {
                "usage": r.usage,
                "selector": r.selector,
                "mtype": r.mtype,
                "data": r.data.hex(),
                "usable": r.usable,
            }
            for r in host.tlsa_records
        ],
        "tlsa_error": host.tlsa_error,
    }


def dns_doc(dns: DnsEvidence | None, now: float) -> JsonObject | None:
    if dns is None:
        return None
    return {
        "mx_status": dns.mx.value,
        "kind": dns.kind.value,
        "error": dns.error,
        "fetched_at": dns.fetched_at or None,
        "age": _age(now, dns.fetched_at),
        "expires_at": dns.expires_at or None,
        "hosts": [host_doc(h) for h in dns.hosts],
    }


def sts_doc(sts: StsEvidence, now: float) -> JsonObject:
    pol = sts.policy
    policy: JsonObject | None = None
    if pol is not None:
        policy = {
            "id": pol.policy_id,
            "mode": pol.mode.value,
            "mx": list(pol.mx),
            "max_age": pol.max_age,
            "fetched_at": pol.fetched_at,
            "age": _age(now, pol.fetched_at),
            "expires_at": pol.expires_at,
            "valid": pol.valid_at(now),
        }
    return {"policy": policy, "error": sts.error, "pending": sts.pending}


def probe_host_doc(h: ProbeHost, now: float) -> JsonObject:
    return {
        "host": h.host,
        "address": h.address,
        "verdict": h.verdict.value,
        "detail": h.detail,
        "protocol": h.protocol,
        "cipher": h.cipher,
        "leaf_sha256": h.leaf_sha256,
        "spki_sha256": h.spki_sha256,
        "probed_at": h.probed_at or None,
        "age": _age(now, h.probed_at),
    }


def probe_doc(state: ProbeState | None, now: float) -> JsonObject | None:
    if state is None:
        return None
    damping: JsonObject | None = None
    if state.pending is not None:
        damping = {
            "held_level": None if state.level is None else state.level.value,
            "pending": state.pending.value,
            "pending_names": list(state.pending_names),
            "count": state.pending_count,
            "since": state.pending_since or None,
            "age": _age(now, state.pending_since),
        }
    return {
        "level": None if state.level is None else state.level.value,
        "verified_names": list(state.verified_names),
        "probed_at": state.probed_at or None,
        "age": _age(now, state.probed_at),
        "damping": damping,
        "hosts": [probe_host_doc(h, now) for h in state.hosts],
    }


def override_doc(ov: Override | None, now: float) -> JsonObject | None:
    if ov is None:
        return None
    return {
        "destination": ov.key,
        "policy": "NOTFOUND" if ov.policy is None else postfix_policy.render(ov.policy),
        "expires_at": ov.expires_at,
        "expires_in": None if ov.expires_at is None else round(ov.expires_at - now, 1),
        "active": ov.active_at(now),
        "comment": ov.comment,
        "author": ov.author,
        "created_at": ov.created_at or None,
        "age": _age(now, ov.created_at),
    }


def explain_doc(
    dest: Destination, answers: list[tuple[str, Verdict]], ev: Evidence, now: float
) -> JsonObject:
    return {
        "destination": dest.key,
        "now": now,
        "answers": [{"profile": name, **verdict_doc(v)} for name, v in answers],
        "dns": dns_doc(ev.dns, now),
        "mta_sts": sts_doc(ev.sts, now),
        "probe": probe_doc(ev.probe, now),
        "override": override_doc(ev.override, now),
    }


def jsonable(value: object) -> JsonValue:
    """Stats objects of other modules (dataclass, mapping, enum, number) as JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


# -- report -----------------------------------------------------------------------------


def report_doc(report: Report, *, temp_answers: int, dry_run: JsonValue) -> JsonObject:
    """``policyctl report --json``: ``temp_answers`` is the count of TEMP answers since
    start, ``dry_run`` the dry-run profiles' section."""
    now = report.now
    return {
        "since": report.since,
        "now": now,
        "dry_run": dry_run,
        "changes": [
            {
                "at": e.at,
                "destination": e.key,
                "profile": e.profile,
                "level": e.level,
                "previous": e.previous,
                "reason": e.reason,
            }
            for e in report.changes
        ],
        "levels": jsonable(report.levels),
        "rules": {p: {r.value: n for r, n in by.items()} for p, by in report.rules.items()},
        "temp": {
            "answers": temp_answers,
            "destinations": [
                {"destination": t.key, "profile": t.profile, "reason": t.reason}
                for t in report.temp
            ],
        },
        "held": [{"destination": key, **(probe_doc(st, now) or {})} for key, st in report.held],
        "sts_failing": [
            {"destination": f.key, "error": f.error, "cached": f.cached} for f in report.sts_failing
        ],
    }
