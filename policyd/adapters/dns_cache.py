"""The DNS adapter's answer cache: TTL-bounded, least recently used evicted first.

Keys are (name, type) with the name folded (lower case, no trailing dot; "." for the
root), so ``Example.COM.`` and ``example.com`` share an entry.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from policyd.adapters.dns_answer import DnsAnswer
from policyd.core.names import fold

Key = tuple[str, str]


def cache_key(name: str, rdtype: str) -> Key:
    return (fold(name) or ".", rdtype)


class AnswerCache:
    """Answers until they expire, at most ``entries`` of them."""

    __slots__ = ("_entries", "_max")

    def __init__(self, entries: int) -> None:
        self._max = entries
        self._entries: OrderedDict[Key, tuple[float, DnsAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> DnsAnswer | None:
        """The cached answer with the TTL it has left, or None (an expired one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        remaining = expires - now
        if remaining <= 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer.with_ttl(math.ceil(remaining))

    def put(self, key: Key, answer: DnsAnswer, now: float) -> None:
        self._entries[key] = (now + answer.ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
