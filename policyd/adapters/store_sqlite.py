"""SQLite store: embedded, zero set-up, WAL, a schema version with migrations.

All database work runs on one dedicated thread, so the event loop never waits on the disk
and statements keep their order. A database that cannot be opened, is not a database, or
has a schema newer than this program is a :class:`StoreError` at start, never a wipe; any
later ``sqlite3.Error`` (a damaged file, a full disk, a lock held past ``busy_timeout``)
is a :class:`StoreError` too: no sqlite3 exception leaves this module.

The ``events`` table keeps each :class:`~policyd.core.event.Event` as its JSON document
(:func:`~policyd.codec.records.event_to_json`) in ``text``, with ``at`` and ``key`` beside
it for the time index and for a person reading the table. A row of the one-line text of
earlier versions (``level=L reason=R previous=L``) cannot be read back safely (a reason
quoting ``previous=`` passed for another field), so :meth:`SqliteStore.events` skips it and
logs how many it skipped; such rows age out of the log like any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from policyd.adapters.store import SKIPPED_EVENTS, Kind, Record, StoreError, stored_event
from policyd.codec.records import event_to_json
from policyd.core.event import Event

SCHEMA_VERSION: Final = 1
DB_MODE: Final = 0o640  # the database and its journals: the daemon and its group
SQLITE_MAGIC: Final = b"SQLite format 3\x00"  # the first 16 bytes of every database file
MAX_EVENTS: Final = 50_000  # rows kept for `policyctl report`; older ones are pruned
BUSY_TIMEOUT_MS: Final = 5_000  # another process (a backup) holding a lock

# Each entry migrates from version N-1 to N.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
        " expires_at REAL, PRIMARY KEY (kind, key)) WITHOUT ROWID",
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " key TEXT NOT NULL, text TEXT NOT NULL)",
        "CREATE INDEX events_at ON events (at)",
    ),
}

T = TypeVar("T")

log = logging.getLogger("policyd.store")


def _record(kind: Kind, key: object, value: object, expires_at: object) -> Record | None:
    """A row as a :class:`Record`, or None for a row of the wrong types: SQLite's columns
    take any type, and a hand-edited row must be skipped, not crash whoever reads it."""
    if not isinstance(key, str) or not isinstance(value, str):
        return None
    if expires_at is None:
        return Record(kind, key, value, None)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        return None
    try:
        seconds = float(expires_at)
    except OverflowError:
        return None
    return None if math.isnan(seconds) else Record(kind, key, value, seconds)


def _event_row(event: Event) -> tuple[float, str, str]:
    return (event.at, event.key, event_to_json(event))  # Event refuses a time not finite


def _finite(expires_at: float | None) -> float | None:
    """An expiry as JSON can carry it: NaN and infinities become NULL, as SQLite stores a
    NaN bound as a parameter (an infinite expiry and none both mean "never")."""
    return expires_at if expires_at is None or math.isfinite(expires_at) else None


# One statement per kind of row for a whole batch: each row is a JSON array of columns
# (json_extract and json_each: SQLite's JSON functions, built in since 3.38 and in the
# JSON1 extension that distributions enable before that).
_PUT_RECORDS: Final = (
    "INSERT OR REPLACE INTO records (kind, key, value, expires_at)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
)
_APPEND_EVENTS: Final = (
    "INSERT INTO events (at, key, text)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]') FROM json_each(?) ORDER BY key"
)


def path_from_url(url: str) -> str:
    """``sqlite:///abs/path.db`` or ``sqlite:///./relative.db`` or ``sqlite://:memory:``."""
    scheme, sep, rest = url.partition("://")
    if scheme != "sqlite" or not sep or not rest:
        raise StoreError(f"not a sqlite URL: {url!r}")
    if rest == ":memory:":
        return rest
    return rest[1:] if rest.startswith("/./") else rest


class SqliteStore:
    def __init__(self, path: str) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policyd-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> SqliteStore:
        store = cls(path_from_url(url))
        try:
            await store._run(store._open)
        except StoreError:
            store._pool.shutdown(wait=True)
            raise
        return store

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from exc

    def _check_file(self) -> None:
        """Refuse anything at the path that is not an SQLite database before SQLite sees it:
        SQLite treats a file shorter than its header as empty and would overwrite it."""
        path = Path(self._path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{self._path}: {exc.strerror or exc}") from exc
        if head and head != SQLITE_MAGIC:
            raise StoreError(f"{self._path}: not an SQLite database; refusing to touch it")

    def _open(self) -> None:
        if self._path != ":memory:":
            self._check_file()
            try:
                # Created owner/group-only whatever the umask (review L5); SQLite gives its
                # -wal and -shm files the database file's permissions.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                os.close(os.open(self._path, flags, DB_MODE))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"{self._path}: {exc.strerror or exc}") from exc
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise StoreError(f"{self._path}: database is damaged: {result}")
            self._check_version(db)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except (sqlite3.Error, StoreError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self._path}: {exc}") from exc
        self._db = db

    def _check_version(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path}: schema version {version} is newer than this policyd "
                f"({SCHEMA_VERSION}); refusing to touch it"
            )

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in _MIGRATIONS[target]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
            db.execute("COMMIT")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db

    async def put(self, record: Record) -> None:
        def run() -> None:
            self._conn.execute(
                "INSERT OR REPLACE INTO records (kind, key, value, expires_at) VALUES (?, ?, ?, ?)",
                (record.kind.value, record.key, record.value, record.expires_at),
            )

        await self._run(run)

    async def get(self, kind: Kind, key: str) -> Record | None:
        def run() -> Record | None:
            row = self._conn.execute(
                "SELECT value, expires_at FROM records WHERE kind = ? AND key = ?",
                (kind.value, key),
            ).fetchone()
            if row is None:
                return None
            record = _record(kind, key, row[0], row[1])
            if record is None:
                log.warning("%s: %s %r: skipped: malformed row", self._path, kind.value, key)
            return record

        return await self._run(run)

    async def delete(self, kind: Kind, key: str) -> bool:
        def run() -> bool:
            cur = self._conn.execute(
                "DELETE FROM records WHERE kind = ? AND key = ?", (kind.value, key)
            )
            return cur.rowcount > 0

        return await self._run(run)

    async def scan(self, kind: Kind) -> list[Record]:
        def run() -> list[Record]:
            rows = self._conn.execute(
                "SELECT key, value, expires_at FROM records WHERE kind = ?", (kind.value,)
            ).fetchall()
            records = []
            for k, v, e in rows:
                record = _record(kind, k, v, e)
                if record is None:
                    log.warning("%s: %s %.128r: skipped: malformed row", self._path, kind.value, k)
                else:
                    records.append(record)
            return records

        return await self._run(run)

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        # Kinds kept: overrides always, MTA-STS policies unless asked (both bound below).
        kept = (Kind.OVERRIDE.value, Kind.OVERRIDE.value if mta_sts else Kind.STS.value)

        def run() -> int:
            if key is None:
                cur = self._conn.execute("DELETE FROM records WHERE kind NOT IN (?, ?)", kept)
            else:
                cur = self._conn.execute(
                    "DELETE FROM records WHERE kind NOT IN (?, ?) AND key = ?", (*kept, key)
                )
            return cur.rowcount

        return await self._run(run)

    async def append_event(self, event: Event) -> None:
        row = _event_row(event)

        def run() -> None:
            conn = self._conn
            cur = conn.execute("INSERT INTO events (at, key, text) VALUES (?, ?, ?)", row)
            rowid = cur.lastrowid or 0
            if rowid % 1000 == 0:
                conn.execute("DELETE FROM events WHERE id <= ?", (rowid - MAX_EVENTS,))

        await self._run(run)

    async def write_batch(self, records: Sequence[Record], events: Sequence[Event]) -> None:
        """Put ``records`` and append ``events`` in one transaction (write-behind batches),
        then prune the event log to its bound.

        Each kind of row goes in as one JSON array through ``json_each``: one statement
        step for the whole batch, where ``executemany`` would step once per row and hand
        the interpreter lock to and from the event loop's thread twice a row (measured in
        the cold-lookup bench: 2.7-3.7% of the loop thread's time in futex wake-ups)."""
        record_rows = [(r.kind.value, r.key, r.value, _finite(r.expires_at)) for r in records]
        event_rows = [_event_row(e) for e in events]

        def run() -> None:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if record_rows:
                    conn.execute(_PUT_RECORDS, (json.dumps(record_rows),))
                if event_rows:
                    conn.execute(_APPEND_EVENTS, (json.dumps(event_rows),))
                    conn.execute(
                        "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?",
                        (MAX_EVENTS,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(run)

    async def delete_expired(self, now: float) -> int:
        """Delete cached evidence that expired before ``now`` (housekeeping); overrides
        stay (``policyctl override`` shows and removes them)."""

        def run() -> int:
            cur = self._conn.execute(
                "DELETE FROM records WHERE kind != ? AND expires_at IS NOT NULL AND expires_at < ?",
                (Kind.OVERRIDE.value, now),
            )
            return cur.rowcount

        return await self._run(run)

    async def events(self, since: float) -> list[Event]:
        def run() -> list[Event]:
            rows = self._conn.execute(
                "SELECT text FROM events WHERE at >= ? ORDER BY id", (since,)
            ).fetchall()
            found = [stored_event(t) for (t,) in rows]
            skipped = found.count(None)
            if skipped:
                log.warning(SKIPPED_EVENTS, self._path, skipped)
            # ``at`` of a hand-edited row may disagree with its event: the event decides.
            return [e for e in found if e is not None and e.at >= since]

        return await self._run(run)

    async def close(self) -> None:
        if self._closed:
            return

        def run() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(run)
        self._closed = True
        self._pool.shutdown(wait=True)
