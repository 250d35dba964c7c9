"""Change messages a fleet publishes on its Redis channel, and their JSON form.

Messages, not records: nothing stores them, and their version is the channel's own
(``policyd:v1:changes``); they share the document helpers of :mod:`policyd.codec.records`.

One message says "this changed, read it again": an override of one destination key
(set or deleted: the receiver reads the store to learn which), or a flush of one key or
of everything. The message carries no values, so a lost or replayed message can never
install anything the store does not hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from policyd.codec.records import bool_field, dump_document, load_document

VERSION: Final = 1
MAX_MESSAGE_CHARS: Final = 2048  # a destination key is at most a few hundred characters
MAX_KEY_CHARS: Final = 1024
MAX_ORIGIN_CHARS: Final = 128


class ChangeKind(enum.Enum):
    OVERRIDE = "override"  # an override was set or deleted
    FLUSH = "flush"  # cached evidence was dropped


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    key: str | None  # the destination key; None: every key (flush only)
    origin: str = ""  # the publishing host, for logs
    mta_sts: bool = True  # a flush that drops cached MTA-STS policies too

    def __post_init__(self) -> None:
        if self.key is None and self.kind is not ChangeKind.FLUSH:
            raise ValueError("an override change needs a key")
        if self.key is not None and not 0 < len(self.key) <= MAX_KEY_CHARS:
            raise ValueError("change key must be 1-1024 characters")
        if len(self.origin) > MAX_ORIGIN_CHARS:
            raise ValueError("change origin too long")


def change_to_json(change: Change) -> str:
    return dump_document(
        {
            "v": VERSION,
            "kind": change.kind.value,
            "key": change.key,
            "origin": change.origin,
            "mta_sts": change.mta_sts,
        }
    )


def change_from_json(text: str) -> Change:
    """Raises ValueError on anything :func:`change_to_json` did not write."""
    doc = load_document(text, "change message", MAX_MESSAGE_CHARS, version=VERSION)
    key, origin = doc.get("key"), doc.get("origin", "")
    if key is not None and not isinstance(key, str):
        raise ValueError("change key must be a string or null")
    if not isinstance(origin, str):
        raise ValueError("change origin must be a string")
    mta_sts = bool_field(doc.get("mta_sts", True), "change mta_sts")
    return Change(ChangeKind(doc.get("kind")), key, origin, mta_sts)
