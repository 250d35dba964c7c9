"""StsPolicy <-> the JSON document kept in the store under ``Kind.STS`` (key: the domain).

The document carries a version so a later format can be told apart. Decoding validates
every field with the same rules as the policy grammar and raises only ValueError, so a
corrupt or foreign record is skipped, never half-loaded.
"""

from __future__ import annotations

import json
import math
from typing import Final

from policyd.codec.mtasts import MAX_AGE_CAP, is_mx_pattern, is_policy_id
from policyd.core.evidence import StsMode, StsPolicy

VERSION: Final = 1
MAX_RECORD_CHARS: Final = 128 * 1024  # a policy body is at most 64 KiB (RFC 8461 3.3)


def policy_to_json(policy: StsPolicy) -> str:
    doc = {
        "v": VERSION,
        "id": policy.policy_id,
        "mode": policy.mode.value,
        "mx": list(policy.mx),
        "max_age": policy.max_age,
        "fetched_at": policy.fetched_at,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def policy_from_json(text: str) -> StsPolicy:
    """Raises ValueError on anything that is not a document :func:`policy_to_json` wrote."""
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError("sts record too large")
    try:
        doc = json.loads(text)  # JSONDecodeError is a ValueError
    except RecursionError:
        raise ValueError("sts record nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("sts record is not an object")
    if doc.get("v") != VERSION:
        raise ValueError(f"unknown sts record version {doc.get('v')!r}")
    policy_id = doc.get("id")
    if not isinstance(policy_id, str) or not is_policy_id(policy_id):
        raise ValueError("sts record id must be 1 to 32 letters or digits")
    mode = doc.get("mode")
    if not isinstance(mode, str):
        raise ValueError("sts record mode must be a string")
    mx = doc.get("mx")
    if not isinstance(mx, list) or not all(isinstance(p, str) and is_mx_pattern(p) for p in mx):
        raise ValueError("sts record mx must be a list of mx patterns")
    max_age = doc.get("max_age")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= MAX_AGE_CAP:
        raise ValueError(f"sts record max_age must be an integer from 0 to {MAX_AGE_CAP}")
    fetched_at = doc.get("fetched_at")
    if isinstance(fetched_at, bool) or not isinstance(fetched_at, int | float):
        raise ValueError("sts record fetched_at must be a number")
    try:
        fetched = float(fetched_at)  # OverflowError for an integer beyond a float's range
    except OverflowError:
        raise ValueError("sts record fetched_at is out of range") from None
    if not math.isfinite(fetched) or fetched < 0:
        raise ValueError("sts record fetched_at must be a finite, non-negative time")
    # StsMode() and StsPolicy() raise ValueError for an unknown mode or an enforce without mx.
    return StsPolicy(StsMode(mode), tuple(mx), max_age, policy_id, fetched)
