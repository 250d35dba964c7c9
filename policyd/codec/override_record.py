"""Override <-> the JSON document kept in the store under ``Kind.OVERRIDE`` (key: the
destination).

Decoding validates every field and raises only ValueError, so a corrupt or foreign record
(hand-edited, written by another fleet member) is skipped with a log line, never loaded
half-way and never a reason for the daemon not to start. The policy goes through the
same parser as ``policyctl override set``, so a stored record cannot carry what the
control socket refuses (say ``match=a,tafile=/etc/passwd``). A comment or author with a
newline or other control character is kept, escaped: refusing the record would drop
the override, which may be the only thing keeping a destination strong.
"""

from __future__ import annotations

import json
import math
from typing import Final

from policyd.codec import postfix_policy
from policyd.core.evidence import Override
from policyd.core.types import one_line

MAX_RECORD_CHARS: Final = 16 * 1024  # a policy (4 KiB at most), a comment and an author
MAX_TEXT_CHARS: Final = 1024  # comment and author; the control socket allows 500


def override_to_json(ov: Override) -> str:
    return json.dumps(
        {
            "policy": None if ov.policy is None else postfix_policy.render(ov.policy),
            "expires_at": ov.expires_at,
            "comment": ov.comment,
            "author": ov.author,
            "created_at": ov.created_at,
        },
        sort_keys=True,
    )


def override_from_json(key: str, text: str) -> Override:
    """Raises ValueError on anything that is not a document :func:`override_to_json` wrote."""
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError("override record too large")
    try:
        doc = json.loads(text)  # JSONDecodeError is a ValueError
    except RecursionError:
        raise ValueError("override record nested too deeply") from None
    if not isinstance(doc, dict) or "policy" not in doc:
        raise ValueError("override record is not an object with a policy")
    pol_text = doc["policy"]
    if pol_text is not None and not isinstance(pol_text, str):
        raise ValueError("override record policy must be a string or null")
    expires = doc.get("expires_at")
    return Override(
        key=key,
        # PolicySyntaxError is a ValueError
        policy=None if pol_text is None else postfix_policy.parse(pol_text),
        expires_at=None if expires is None else _time(expires, "expires_at"),
        comment=_text(doc.get("comment", ""), "comment"),
        author=_text(doc.get("author", ""), "author"),
        created_at=_time(doc.get("created_at", 0.0), "created_at"),
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"override record {what} must be a short string")
    return one_line(value)


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"override record {what} must be a number")
    try:
        seconds = float(value)  # OverflowError for an integer beyond a float's range
    except OverflowError:
        raise ValueError(f"override record {what} is out of range") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"override record {what} must be a finite, non-negative time")
    return seconds
