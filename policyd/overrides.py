"""The postmaster's overrides: a table in memory for the answer's path, kept in the store.

Every change goes to the store first (``Kind.OVERRIDE``), then to memory; the methods say
which keys changed, so that the service drops the answers decided without them.

A parent-form override (``.example.com``) reaches every subdomain at any depth, as in
Postfix's own table walk (``tls_policy_lookup`` in ``smtp_tls_policy.c``: ``sub.example.com``,
then ``.example.com``, then ``.com``), but here also when the subdomain has evidence of its
own: Postfix would ask for the parent form only after a NOTFOUND, and an override outranks
all evidence. The most specific override wins; ``example.com`` itself is not under
``.example.com``. Bracketed next hops and ``domain:port`` get their exact key only, as in
Postfix.
"""

from __future__ import annotations

import logging

from policyd.adapters.store import Kind, Record, Store
from policyd.codec.records import override_from_json, override_to_json
from policyd.core.evidence import Override

log = logging.getLogger("policyd")


class Overrides:
    __slots__ = ("_store", "by_key")

    def __init__(self, store: Store) -> None:
        self._store = store
        self.by_key: dict[str, Override] = {}

    def active(self, key: str, now: float) -> Override | None:
        """The override for ``key``: its own, else the nearest parent form's (an expired
        one counts as none and lets a parent's through)."""
        by_key = self.by_key
        if not by_key:
            return None
        for form in parent_walk(key):
            ov = by_key.get(form)
            if ov is not None and ov.active_at(now):
                return ov
        return None

    async def load(self) -> set[str]:
        """(Re)read every override from the store; the keys whose override changed."""
        loaded: dict[str, Override] = {}
        for rec in await self._store.scan(Kind.OVERRIDE):
            ov = _readable(rec)
            if ov is not None:
                loaded[rec.key] = ov
        old = self.by_key
        self.by_key = loaded
        return {k for k in loaded.keys() | old.keys() if loaded.get(k) != old.get(k)}

    async def put(self, ov: Override) -> None:
        await self._store.put(Record(Kind.OVERRIDE, ov.key, override_to_json(ov), ov.expires_at))
        self.by_key[ov.key] = ov

    async def delete(self, key: str) -> bool:
        """Whether there was one, in the store or in memory."""
        found = await self._store.delete(Kind.OVERRIDE, key)
        return self.by_key.pop(key, None) is not None or found

    async def reload(self, key: str) -> bool:
        """Read one override again (a fleet member set or deleted it): whether it changed.
        StoreError escapes."""
        rec = await self._store.get(Kind.OVERRIDE, key)
        ov = None if rec is None else _readable(rec)
        if ov == self.by_key.get(key):
            return False
        if ov is None:
            del self.by_key[key]
        else:
            self.by_key[key] = ov
        return True

    def expire(self, now: float) -> list[str]:
        """Drop the overrides expired at ``now``; their keys."""
        expired = [k for k, o in self.by_key.items() if not o.active_at(now)]
        for key in expired:
            del self.by_key[key]
        return expired


def parent_walk(key: str) -> tuple[str, ...]:
    """The keys Postfix would try for ``key``, most specific first: ``a.b.example`` gives
    itself, ``.b.example``, ``.example``. A bracketed key or one with a port only itself."""
    if key.startswith("[") or ":" in key:
        return (key,)
    forms = [key]
    dot = key.find(".", 1)
    while dot != -1:
        forms.append(key[dot:])
        dot = key.find(".", dot + 1)
    return tuple(forms)


def under_parent(key: str, parent: str) -> bool:
    """Whether the parent-form key ``parent`` (``.example.com``) reaches ``key``."""
    return parent in parent_walk(key)[1:]


def _readable(rec: Record) -> Override | None:
    try:
        return override_from_json(rec.key, rec.value)
    except ValueError as exc:  # the codec raises nothing else
        log.error("%s: ignoring unreadable override: %s", rec.key, exc)
        return None
