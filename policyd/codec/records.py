"""The records policyd keeps in its store, as versioned JSON documents.

One module for every persisted value, so that they share one versioning policy and one
set of field validators:

=================  ==========================  =========================================
value              store kind (key)            functions
=================  ==========================  =========================================
``Override``       ``Kind.OVERRIDE`` (dest.)   :func:`override_to_json`, ``_from_json``
``StsPolicy``      ``Kind.STS`` (domain)       :func:`sts_policy_to_json`, ``_from_json``
``ProbeState``     ``Kind.PROBE`` (dest.)      :func:`probe_state_to_json`, ``_from_json``
``Event``          the event log               :func:`event_to_json`, ``_from_json``
=================  ==========================  =========================================

Every document carries ``"v": VERSION``; a later format gets a new number and a reader
that refuses what it does not know. Overrides written before they carried a version are
read as version 1 (their fields are the same). Decoding validates every field and raises
only ValueError, so a corrupt or foreign record (hand-edited, written by another fleet
member) is skipped with a log line by its reader, never half-loaded, and never a reason
for the daemon not to start.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

from policyd.codec import postfix_policy
from policyd.codec.mtasts import MAX_AGE_CAP, is_mx_pattern, is_policy_id
from policyd.core.event import Event
from policyd.core.evidence import (
    Override,
    ProbeHost,
    ProbeLevel,
    ProbeState,
    ProbeVerdict,
    StsMode,
    StsPolicy,
)
from policyd.core.types import Rule, one_line

VERSION: Final = 1

# Size bounds, checked before parsing: a record beyond them was not written by policyd.
MAX_OVERRIDE_CHARS: Final = 16 * 1024  # a policy (4 KiB at most), a comment and an author
MAX_STS_CHARS: Final = 128 * 1024  # a policy body is at most 64 KiB (RFC 8461 3.3)
MAX_PROBE_CHARS: Final = 256 * 1024  # far above 3 MX hosts x a few addresses
# Levels are policies without blanks, at most a socketmap reply (100,000 bytes) each; the
# reason is at most core.types.MAX_REASON characters, escaped.
MAX_EVENT_CHARS: Final = 256 * 1024
MAX_TEXT_CHARS: Final = 1024  # an override's comment and author (the control socket: 500)
MAX_FIELD_CHARS: Final = 1024  # a probe host's details, names, fingerprints
MAX_HOSTS: Final = 64  # probe_host probes at most a handful of addresses per MX host
MAX_WORD_CHARS: Final = 128 * 1024  # an event's key, profile or level (see MAX_EVENT_CHARS)

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


# -- documents and fields (also used by policyd.codec.fleet) ------------------------------


# json.dumps with these arguments would build an encoder per call; every never-seen
# destination writes an event and a kept answer.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def dump_document(doc: dict[str, object]) -> str:
    return _ENCODER.encode(doc)


def load_document(
    text: str, what: str, max_chars: int, *, version: int | None = VERSION
) -> dict[str, object]:
    """The JSON object in ``text``, of ``version`` (None: any or none). ValueError for
    anything else: too long, not JSON, nested too deeply, not an object, another version."""
    if len(text) > max_chars:
        raise ValueError(f"{what} too large")
    try:
        doc = json.loads(text)  # JSONDecodeError is a ValueError
    except RecursionError:
        raise ValueError(f"{what} nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not an object")
    if version is not None and doc.get("v") != version:
        raise ValueError(f"unknown {what} version {doc.get('v')!r}")
    return doc


def time_field(value: object, what: str) -> float:
    """Seconds since the epoch: a finite, non-negative JSON number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    try:
        seconds = float(value)  # OverflowError for an integer beyond a float's range
    except OverflowError:
        raise ValueError(f"{what} is out of range") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite, non-negative time")
    return seconds


def text_field(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or len(value) > max_chars:
        raise ValueError(f"{what} must be a short string")
    return value


def count_field(value: object, what: str, high: int | None = None) -> int:
    """A non-negative JSON integer (not a boolean), at most ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    if high is not None and value > high:
        raise ValueError(f"{what} must be at most {high}")
    return value


def list_field(value: object, what: str, max_items: int) -> list[object]:
    if not isinstance(value, list) or len(value) > max_items:
        raise ValueError(f"{what} must be a short list")
    return value


def bool_field(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")
    return value


# -- Override --------------------------------------------------------------------------------


def override_to_json(ov: Override) -> str:
    return dump_document(
        {
            "v": VERSION,
            "policy": None if ov.policy is None else postfix_policy.render(ov.policy),
            "expires_at": ov.expires_at,
            "comment": ov.comment,
            "author": ov.author,
            "created_at": ov.created_at,
        }
    )


def override_from_json(key: str, text: str) -> Override:
    """The policy goes through the same parser as ``policyctl override set``, so a stored
    record cannot carry what the control socket refuses (``match=a,tafile=/etc/passwd``).
    A comment or author with a newline or other control character is kept, escaped:
    refusing the record would drop the override, which may be the only thing keeping a
    destination strong."""
    doc = load_document(text, "override record", MAX_OVERRIDE_CHARS, version=None)
    if doc.get("v", VERSION) != VERSION:  # no "v": written before overrides carried one
        raise ValueError(f"unknown override record version {doc.get('v')!r}")
    if "policy" not in doc:
        raise ValueError("override record has no policy")
    pol_text = doc["policy"]
    if pol_text is not None and not isinstance(pol_text, str):
        raise ValueError("override record policy must be a string or null")
    expires = doc.get("expires_at")
    return Override(
        key=key,
        # PolicySyntaxError is a ValueError
        policy=None if pol_text is None else postfix_policy.parse(pol_text),
        expires_at=None if expires is None else time_field(expires, "override expires_at"),
        comment=one_line(text_field(doc.get("comment", ""), "override comment", MAX_TEXT_CHARS)),
        author=one_line(text_field(doc.get("author", ""), "override author", MAX_TEXT_CHARS)),
        created_at=time_field(doc.get("created_at", 0.0), "override created_at"),
    )


# -- StsPolicy ---------------------------------------------------------------------------------


def sts_policy_to_json(policy: StsPolicy) -> str:
    return dump_document(
        {
            "v": VERSION,
            "id": policy.policy_id,
            "mode": policy.mode.value,
            "mx": list(policy.mx),
            "max_age": policy.max_age,
            "fetched_at": policy.fetched_at,
        }
    )


def sts_policy_from_json(text: str) -> StsPolicy:
    """Every field is checked with the rules of the policy grammar (RFC 8461 3.2)."""
    doc = load_document(text, "sts record", MAX_STS_CHARS)
    policy_id = doc.get("id")
    if not isinstance(policy_id, str) or not is_policy_id(policy_id):
        raise ValueError("sts record id must be 1 to 32 letters or digits")
    mode = doc.get("mode")
    if not isinstance(mode, str):
        raise ValueError("sts record mode must be a string")
    mx = doc.get("mx")
    if not isinstance(mx, list) or not all(isinstance(p, str) and is_mx_pattern(p) for p in mx):
        raise ValueError("sts record mx must be a list of mx patterns")
    max_age = count_field(doc.get("max_age"), "sts record max_age", MAX_AGE_CAP)
    fetched = time_field(doc.get("fetched_at"), "sts record fetched_at")
    # StsMode() and StsPolicy() raise ValueError for an unknown mode or an enforce without mx.
    return StsPolicy(StsMode(mode), tuple(mx), max_age, policy_id, fetched)


# -- ProbeState --------------------------------------------------------------------------------


def probe_state_to_json(state: ProbeState) -> str:
    return dump_document(
        {
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
    )


def probe_state_from_json(text: str) -> ProbeState:
    doc = load_document(text, "probe record", MAX_PROBE_CHARS)
    hosts = list_field(doc.get("hosts"), "probe record hosts", MAX_HOSTS)
    names = list_field(doc.get("verified_names"), "probe record verified_names", MAX_HOSTS)
    # absent in records written before it existed
    pending = list_field(doc.get("pending_names", []), "probe record pending_names", MAX_HOSTS)
    return ProbeState(
        level=_probe_level(doc.get("level")),
        hosts=tuple(_host_from_doc(h) for h in hosts),
        verified_names=tuple(_host_name(n) for n in names),
        pending=_probe_level(doc.get("pending")),
        pending_names=tuple(_host_name(n) for n in pending),
        pending_count=count_field(doc.get("pending_count"), "probe record pending_count"),
        pending_since=time_field(doc.get("pending_since"), "probe record pending_since"),
        probed_at=time_field(doc.get("probed_at"), "probe record probed_at"),
    )


def _host_to_doc(host: ProbeHost) -> dict[str, object]:
    doc: dict[str, object] = {name: getattr(host, name) for name in _HOST_TEXT_FIELDS}
    doc["verdict"] = host.verdict.value
    doc["probed_at"] = host.probed_at
    return doc


def _host_from_doc(doc: object) -> ProbeHost:
    if not isinstance(doc, dict):
        raise ValueError("probe record host is not an object")
    text = {
        name: text_field(doc.get(name), f"probe record {name}", MAX_FIELD_CHARS)
        for name in _HOST_TEXT_FIELDS
    }
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
        probed_at=time_field(doc.get("probed_at"), "probe record host probed_at"),
    )


def _probe_level(value: object) -> ProbeLevel | None:
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


# -- Event -------------------------------------------------------------------------------------


def event_to_json(event: Event) -> str:
    return dump_document(
        {
            "v": VERSION,
            "at": event.at,
            "key": event.key,
            "profile": event.profile,
            "rule": event.rule.value,
            "level": event.level,
            "previous": event.previous,
            "reason": event.reason,
            "dry_run": event.dry_run,
        }
    )


def event_from_json(text: str) -> Event:
    """ValueError for anything :func:`event_to_json` did not write, such as an event of the
    one-line text format of earlier versions (``level=L reason=R previous=L``)."""
    doc = load_document(text, "event", MAX_EVENT_CHARS)
    rule = doc.get("rule")
    if not isinstance(rule, str):
        raise ValueError("event rule must be a string")
    previous = doc.get("previous")
    if previous is not None:
        previous = text_field(previous, "event previous", MAX_WORD_CHARS)
    return Event(
        at=time_field(doc.get("at"), "event at"),
        key=text_field(doc.get("key"), "event key", MAX_WORD_CHARS),
        profile=text_field(doc.get("profile"), "event profile", MAX_WORD_CHARS),
        rule=Rule(rule),  # ValueError for an unknown rule
        level=text_field(doc.get("level"), "event level", MAX_WORD_CHARS),
        reason=text_field(doc.get("reason"), "event reason", MAX_EVENT_CHARS),
        previous=previous,
        dry_run=bool_field(doc.get("dry_run", False), "event dry_run"),
    )
