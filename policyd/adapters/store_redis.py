"""Redis store: one cache shared by a fleet of mail hosts.

Layout under a configurable prefix (default ``policyd:``):

* ``{prefix}schema``: the schema version, the string ``"1"``. Written with SET NX by the
  first host to open an empty server; a higher version is a :class:`StoreError` at open
  ("refusing to touch it"), never an overwrite.
* ``{prefix}{kind}`` (``policyd:override``, ``policyd:sts``, ...): one hash per
  :class:`Kind`, field = record key, value = JSON ``{"value": <JSON text>, "expires_at":
  <float|null>}``. The record value stays the caller's JSON *text* (a string inside the
  envelope), so it comes back byte for byte: the store never interprets it.
* ``{prefix}event-log``: a stream of ``at`` / ``key`` / ``event`` entries, ``event`` the
  :class:`~policyd.core.event.Event` as its JSON document
  (:func:`~policyd.codec.records.event_to_json`), trimmed exactly to ``max_events`` on
  every XADD. Stream IDs are stable, so reading it page by page stays consistent while
  other hosts append and trim. An entry of earlier versions (``at`` / ``key`` / ``text``,
  the event as one line of text, which cannot be read back safely) is skipped, and the
  number skipped logged; such entries age out of the stream like any other.

No Redis TTLs, on purpose. Like the SQLite store, ``expires_at`` is stored and returned but
not enforced: callers decide what an expired record still means (stale evidence may still be
used when a fresh lookup fails; an expired override stays visible to ``policyctl override
list`` until cleaned). A key per record with EXPIRE would make Redis forget evidence behind
policyd's back and turn ``scan`` and ``flush(None)`` into SCANs over the whole keyspace; a
hash per kind keeps them to HSCAN and DEL of a handful of keys. Hash fields cannot carry
their own TTL before Redis 7.4 (HEXPIRE), and Debian ships 7.0.

URLs: see :mod:`policyd.adapters.redis_url` (``redis://``, ``rediss://``, ``unix://`` and
``redis+sentinel://``).
Multi-key updates use MULTI, so every key must live on one server: Redis Cluster is not
supported (a replicated primary behind one address is fine).

Every redis-py or OS error is translated into :class:`StoreError` at this boundary; time
spent on a dead or stuck server is bounded by the connect and command timeouts below, and
the connections by ``[store] redis_max_connections`` (a call waits for a free one at most
the command timeout, then fails: security review L8).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from policyd.adapters.redis_url import client_from_url, describe_url
from policyd.adapters.store import SKIPPED_EVENTS, Kind, Record, StoreError, stored_event
from policyd.codec.records import event_to_json
from policyd.core.event import Event
from policyd.settings import DEFAULT_REDIS_CONNECTIONS

SCHEMA_VERSION: Final = 1
DEFAULT_PREFIX: Final = "policyd:"
CONNECT_TIMEOUT: Final = 5.0  # seconds to establish a connection (TCP, TLS or unix socket)
COMMAND_TIMEOUT: Final = 5.0  # seconds to wait for a reply; a stopped server fails, not hangs
# One immediate reconnect: a pooled connection may have been closed by a server restart or a
# failover since its last use. Worst case per call: (1 + RETRIES) * (connect + command).
RETRIES: Final = 1
MAX_EVENTS: Final = 50_000  # entries kept for `policyctl report`, as in the SQLite store
EVENTS_PAGE: Final = 1_000  # stream entries per XRANGE round trip
SCAN_COUNT: Final = 500  # HSCAN COUNT hint: fields per round trip

log = logging.getLogger("policyd.store")

# Record kinds that `flush` drops: everything but overrides, as in the SQLite store.
_EVIDENCE_KINDS: Final = tuple(k for k in Kind if k is not Kind.OVERRIDE)


def _encode(record: Record) -> str:
    return json.dumps({"value": record.value, "expires_at": record.expires_at})


def _decode(kind: Kind, key: str, raw: str) -> Record:
    """A hash field back into a :class:`Record`; anything else in our namespace is an error."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{kind.value} {key[:128]!r}: malformed record: {exc}") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{kind.value} {key[:128]!r}: malformed record: not an object")
    value = doc.get("value")
    expires_at = doc.get("expires_at")
    if not isinstance(value, str):
        raise StoreError(f"{kind.value} {key[:128]!r}: malformed record: value is not a string")
    if expires_at is None:
        return Record(kind, key, value, None)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise StoreError(f"{kind.value} {key[:128]!r}: malformed record: bad expires_at")
    try:
        seconds = float(expires_at)  # OverflowError for an integer beyond a float's range
    except OverflowError:
        seconds = math.nan
    if math.isnan(seconds):
        raise StoreError(f"{kind.value} {key[:128]!r}: malformed record: bad expires_at")
    return Record(kind, key, value, seconds)


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str,
        prefix: str = DEFAULT_PREFIX,
        max_events: int = MAX_EVENTS,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be positive, not {max_events}")
        self._client = client
        self._name = name  # the URL without its password, for messages
        self._prefix = prefix
        self._max_events = max_events
        self._schema_key = f"{prefix}schema"
        self._events_key = f"{prefix}event-log"
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_events: int = MAX_EVENTS,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        max_connections: int = DEFAULT_REDIS_CONNECTIONS,
    ) -> RedisStore:
        """Connect, PING and check (or write) the schema marker; a :class:`StoreError` if any
        of it fails. See the module docstring for the URL forms. At most ``max_connections``
        at once; a call finding none free waits ``command_timeout``, then is a StoreError."""
        name = describe_url(url)
        client = client_from_url(
            url,
            max_connections=max_connections,
            pool_timeout=command_timeout,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            retry=Retry(NoBackoff(), RETRIES),
        )
        store = cls(client, name=name, prefix=prefix, max_events=max_events)
        try:
            await store._open()
        except StoreError:
            await store._disconnect()
            raise
        return store

    async def _open(self) -> None:
        try:
            await self._client.ping()
            await self._client.set(self._schema_key, str(SCHEMA_VERSION), nx=True)
            raw = await self._client.get(self._schema_key)
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        try:
            version = int(str(raw))
            if version < 1:
                raise ValueError(version)
        except ValueError:
            raise StoreError(
                f"{self._name}: {self._schema_key} is {raw!r}, not a policyd schema version; "
                "refusing to touch it"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._name}: schema version {version} is newer than this policyd "
                f"({SCHEMA_VERSION}); refusing to touch it"
            )
        # Versions below SCHEMA_VERSION would migrate here; version 1 is the first.

    def _error(self, exc: RedisError | OSError) -> StoreError:
        detail = str(exc) or type(exc).__name__
        return StoreError(f"{self._name}: {detail}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _hash(self, kind: Kind) -> str:
        return f"{self._prefix}{kind.value}"

    async def put(self, record: Record) -> None:
        self._check_open()
        try:
            await self._client.hset(self._hash(record.kind), record.key, _encode(record))
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc

    async def get(self, kind: Kind, key: str) -> Record | None:
        self._check_open()
        try:
            raw = await self._client.hget(self._hash(kind), key)
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        return None if raw is None else _decode(kind, key, str(raw))

    async def delete(self, kind: Kind, key: str) -> bool:
        self._check_open()
        try:
            removed = await self._client.hdel(self._hash(kind), key)
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        return removed > 0

    async def scan(self, kind: Kind) -> list[Record]:
        """Every record of a kind, expired ones included (callers decide). HSCAN may return
        a field twice while the hash is rehashed; the dict keeps one. A malformed field is
        skipped with a log line: one bad record written by any fleet member (or by hand)
        must not stop every host from starting."""
        self._check_open()
        found: dict[str, str] = {}
        try:
            async for field, raw in self._client.hscan_iter(self._hash(kind), count=SCAN_COUNT):
                found[str(field)] = str(raw)
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        records = []
        for key, raw in found.items():
            try:
                records.append(_decode(kind, key, raw))
            except StoreError as exc:
                log.warning("%s: skipped: %s", self._name, exc)
        return records

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        """Drop cached evidence (never overrides; MTA-STS policies only with ``mta_sts``) for
        one key, or all with None; the number of records dropped. One MULTI, so other hosts
        never see half a flush."""
        self._check_open()
        kinds = [k for k in _EVIDENCE_KINDS if mta_sts or k is not Kind.STS]
        hashes = [self._hash(kind) for kind in kinds]
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                if key is None:
                    for name in hashes:
                        pipe.hlen(name)
                    pipe.delete(*hashes)
                    counts = (await pipe.execute())[: len(hashes)]
                else:
                    for name in hashes:
                        pipe.hdel(name, key)
                    counts = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        return sum(int(n) for n in counts)

    async def append_event(self, event: Event) -> None:
        """Exact trimming (MAXLEN =, not ~): the cap is a real bound whatever its size, and
        at policyd's event rate the cost of evicting one entry per append is nothing."""
        self._check_open()
        try:
            await self._client.xadd(
                self._events_key,
                {"at": repr(float(event.at)), "key": event.key, "event": event_to_json(event)},
                maxlen=self._max_events,
                approximate=False,
            )
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc

    async def events(self, since: float) -> list[Event]:
        """Events with ``at >= since``, oldest first (in append order, as SQLite's ``id``).
        ``at`` comes from each host's clock, so the whole stream is read and filtered rather
        than cut off at the first older entry. One bad entry (any fleet member, a hand
        edit, an earlier version) must not hide the whole history from ``policyctl
        report``: it is skipped and counted."""
        self._check_open()
        out: list[Event] = []
        skipped = 0
        start = "-"
        try:
            while True:
                page = await self._client.xrange(
                    self._events_key, min=start, max="+", count=EVENTS_PAGE
                )
                entries = page or []
                for _, fields in entries:
                    if not fields:
                        continue  # XRANGE reports no fields for an entry deleted meanwhile
                    # An entry of an earlier version has no "event" field: skipped.
                    event = stored_event(fields.get("event"))
                    if event is None:
                        skipped += 1
                    elif event.at >= since:
                        out.append(event)
                if len(entries) < EVENTS_PAGE:
                    break
                start = f"({entries[-1][0]!s}"  # exclusive: resume after the last entry seen
        except (RedisError, OSError) as exc:
            raise self._error(exc) from exc
        if skipped:
            log.warning(SKIPPED_EVENTS, self._name, skipped)
        return out

    async def _disconnect(self) -> None:
        # Closing sockets to a server that is already gone: nothing left to do.
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    async def close(self) -> None:
        """Idempotent; every later call is a :class:`StoreError`."""
        if self._closed:
            return
        self._closed = True
        await self._disconnect()
