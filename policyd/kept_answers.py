"""Answers kept through a resolver outage (serve-stale, RFC 8767): what is saved, how long.

Through an outage a destination that would now get TEMP keeps the last answer decided for
it from fresh evidence, for at most ``KEEP_ANSWERS_FOR``: from memory, else from the store
(after a restart, or once evicted from memory). They are saved per destination under
``Kind.ANSWER``, one record with every profile's latest verdict that is not TEMP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Final

from policyd.adapters.store import Kind, Record, Store, StoreError
from policyd.codec import postfix_policy
from policyd.core.types import Outcome, Rule, Verdict

log = logging.getLogger("policyd")

# Seconds a destination's last answer is kept for a resolver outage (RFC 8767 4 suggests
# 1 to 3 days of serve-stale; one day: a longer outage defers mail, never weakens it).
KEEP_ANSWERS_FOR: Final = 86400.0
# A kept answer confirmed by fresh evidence is saved again after this many seconds, so
# that its stored copy does not expire while the destination stays in use.
KEEP_REFRESH: Final = KEEP_ANSWERS_FOR / 4


def kept_record(key: str, kept: Mapping[str, Verdict], now: float) -> Record:
    """The store record of the answers to keep for ``key`` (profile name -> verdict)."""
    return Record(Kind.ANSWER, key, answers_to_json(kept), now + KEEP_ANSWERS_FOR)


async def read_kept(store: Store, key: str, profile: str, now: float) -> Verdict | None:
    """The answer kept in the store for ``key`` and a profile name, if any is still valid (a
    store error or an unreadable record: none, logged)."""
    try:
        record = await store.get(Kind.ANSWER, key)
    except StoreError as exc:
        log.error("%s: cannot read the kept answer: %s", key, exc)
        return None
    if record is None or (record.expires_at is not None and record.expires_at <= now):
        return None
    try:
        return answers_from_json(record.value).get(profile)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        log.error("%s: ignoring an unreadable kept answer: %s", key, exc)
        return None


def answers_to_json(kept: Mapping[str, Verdict]) -> str:
    """Kept answers per profile name: the policy (Postfix syntax, null for NOTFOUND), the
    rule and the reason (``json.dumps(..., sort_keys=True)`` of that, each verdict's part
    encoded once: every never-seen destination saves one, from a few distinct verdicts)."""
    parts = [f"{json.dumps(name)}: {_verdict_json(kept[name])}" for name in sorted(kept)]
    return "{" + ", ".join(parts) + "}"


def _verdict_json(v: Verdict) -> str:
    text = _ENCODED.get(v)
    if text is None:
        if len(_ENCODED) >= MAX_ENCODED:
            _ENCODED.clear()
        text = _ENCODED[v] = json.dumps(
            {
                "policy": None if v.policy is None else postfix_policy.render(v.policy),
                "rule": v.rule.value,
                "reason": v.reason,
            },
            sort_keys=True,
        )
    return text


# Verdicts whose JSON is remembered; past this many the memo starts again (a reason can
# name a host, so distinct verdicts are not a closed set).
MAX_ENCODED: Final = 4096
_ENCODED: dict[Verdict, str] = {}


def answers_from_json(text: str) -> dict[str, Verdict]:
    """Inverse of :func:`answers_to_json`; ValueError (or KeyError, TypeError) when bad."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("kept answers: expected an object")
    out: dict[str, Verdict] = {}
    for name, item in doc.items():
        pol_text = item["policy"]
        rule = Rule(item["rule"])
        reason = str(item["reason"])
        if pol_text is None:
            out[str(name)] = Verdict(Outcome.NOTFOUND, rule, reason)
        else:
            out[str(name)] = Verdict(
                Outcome.POLICY, rule, reason, postfix_policy.parse(str(pol_text))
            )
    return out
