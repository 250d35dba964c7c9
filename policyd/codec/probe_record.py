"""ProbeState <-> the JSON document kept in the store under ``Kind.PROBE``.

The document carries a version so a later format can be told apart. Decoding validates
every field and raises only ValueError, so a corrupt or foreign record is skipped, never
half-loaded.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

from policyd.core.evidence import ProbeHost, ProbeLevel, ProbeState, ProbeVerdict

VERSION: Final = 1
MAX_RECORD_CHARS: Final = 256 * 1024  # far above 3 MX hosts x a few addresses
MAX_HOSTS: Final = 64  # probe_host probes at most a handful of addresses per MX host
MAX_FIELD_CHARS: Final = 1024  # details, names, fingerprints

# LDH labels of 1-63 characters, at most 253 in all (RFC 1035 2.3.4, RFC 5890 2.3.1).
_HOST_NAME: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

_HOST_TEXT_FIELDS: Final = (
    "host",
    "address",
    "detail",
    "protocol",
    "cipher",
    "leaf_sha256",
    "spki_sha256",
)


def state_to_json(state: ProbeState) -> str:
    doc = {
        "v": VERSION,
        "level": None if state.level is None else state.level.value,
        "hosts": [_host_to_doc(h) for h in state.hosts],
        "verified_names": list(state.verified_names),
        "pending": None if state.pending is None else state.pending.value,
        "pending_names": list(state.pending_names),
        "pending_count": state.pending_count,
        "pending_since": state.pending_since,
        "probed_at": state.probed_at,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def state_from_json(text: str) -> ProbeState:
    """Raises ValueError on anything that is not a document :func:`state_to_json` wrote."""
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError("probe record too large")
    try:
        doc = json.loads(text)  # JSONDecodeError is a ValueError
    except RecursionError:
        raise ValueError("probe record nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("probe record is not an object")
    if doc.get("v") != VERSION:
        raise ValueError(f"unknown probe record version {doc.get('v')!r}")
    hosts = doc.get("hosts")
    names = doc.get("verified_names")
    if not isinstance(hosts, list) or len(hosts) > MAX_HOSTS:
        raise ValueError("probe record hosts must be a short list")
    if not isinstance(names, list) or len(names) > MAX_HOSTS:
        raise ValueError("probe record verified_names must be a short list")
    pending_names = doc.get("pending_names", [])  # absent in records before it existed
    if not isinstance(pending_names, list) or len(pending_names) > MAX_HOSTS:
        raise ValueError("probe record pending_names must be a short list")
    count = doc.get("pending_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("probe record pending_count must be a non-negative integer")
    return ProbeState(
        level=_level(doc.get("level")),
        hosts=tuple(_host_from_doc(h) for h in hosts),
        verified_names=tuple(_host_name(n) for n in names),
        pending=_level(doc.get("pending")),
        pending_names=tuple(_host_name(n) for n in pending_names),
        pending_count=count,
        pending_since=_time(doc.get("pending_since"), "pending_since"),
        probed_at=_time(doc.get("probed_at"), "probed_at"),
    )


def _host_to_doc(host: ProbeHost) -> dict[str, object]:
    doc: dict[str, object] = {name: getattr(host, name) for name in _HOST_TEXT_FIELDS}
    doc["verdict"] = host.verdict.value
    doc["probed_at"] = host.probed_at
    return doc


def _host_from_doc(doc: object) -> ProbeHost:
    if not isinstance(doc, dict):
        raise ValueError("probe record host is not an object")
    text = {name: _text(doc.get(name), name) for name in _HOST_TEXT_FIELDS}
    verdict = doc.get("verdict")
    if not isinstance(verdict, str):
        raise ValueError("probe record host verdict must be a string")
    return ProbeHost(
        host=text["host"],
        address=text["address"],
        verdict=ProbeVerdict(verdict),  # ValueError for an unknown verdict
        detail=text["detail"],
        protocol=text["protocol"],
        cipher=text["cipher"],
        leaf_sha256=text["leaf_sha256"],
        spki_sha256=text["spki_sha256"],
        probed_at=_time(doc.get("probed_at"), "host probed_at"),
    )


def _level(value: object) -> ProbeLevel | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("probe level must be a string or null")
    return ProbeLevel(value)


def _host_name(value: object) -> str:
    """A verified name becomes a ``secure match=`` pattern: only a DNS host name, so a
    stored ``x,tafile=/etc/passwd`` can never reach Postfix as an attribute."""
    if not isinstance(value, str) or _HOST_NAME.fullmatch(value) is None:
        raise ValueError(f"probe record verified name {str(value)[:64]!r} is not a host name")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"probe record {what} must be a short string")
    return value


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"probe record {what} must be a number")
    try:
        seconds = float(value)  # OverflowError for an integer beyond a float's range
    except OverflowError:
        raise ValueError(f"probe record {what} is out of range") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"probe record {what} must be a finite, non-negative time")
    return seconds
