"""policyd.adapters.store_sqlite: records, events, schema versions, damaged files."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from policyd.adapters import store_sqlite
from policyd.adapters.store import Kind, Record, StoreError
from policyd.adapters.store_sqlite import SCHEMA_VERSION, SqliteStore, path_from_url
from policyd.codec.records import probe_state_to_json
from policyd.core.event import Event
from policyd.core.evidence import ProbeLevel, ProbeState
from policyd.core.profile import DEFAULT_PROFILES
from policyd.service import PolicyService
from policyd.settings import ProbeSettings
from policyd.sources.probe import ProbeSource
from tests.fakes import FakeDane, FakeProbe, FakeSts, event
from tests.store_contract import check_events_in_append_order
from tests.unit.sources.test_probe import FakeProber


def url(path: Path) -> str:
    return f"sqlite://{path}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(url(tmp_path / "policyd.db"))
    yield s
    await s.close()


def rec(kind: Kind, key: str, value: str = '{"v": 1}', expires: float | None = 100.0) -> Record:
    return Record(kind, key, value, expires)


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("u", "path"),
    [
        ("sqlite:///var/lib/policyd/policyd.db", "/var/lib/policyd/policyd.db"),
        ("sqlite:///./var/policyd.db", "./var/policyd.db"),
        ("sqlite://:memory:", ":memory:"),
    ],
)
def test_path_from_url(u: str, path: str) -> None:
    assert path_from_url(u) == path


@pytest.mark.parametrize("u", ["", "sqlite:", "sqlite://", "redis://localhost", "/var/x.db"])
def test_path_from_url_errors(u: str) -> None:
    with pytest.raises(StoreError):
        path_from_url(u)


# --- records ----------------------------------------------------------------------------


async def test_put_get_replace(store: SqliteStore) -> None:
    assert await store.get(Kind.ANSWER, "example.com") is None
    r = rec(Kind.ANSWER, "example.com")
    await store.put(r)
    assert await store.get(Kind.ANSWER, "example.com") == r
    r2 = rec(Kind.ANSWER, "example.com", '{"v": 2}', None)
    await store.put(r2)
    assert await store.get(Kind.ANSWER, "example.com") == r2


async def test_kinds_are_separate_namespaces(store: SqliteStore) -> None:
    for kind in Kind:
        await store.put(rec(kind, "example.com", f'"{kind.value}"'))
    for kind in Kind:
        got = await store.get(kind, "example.com")
        assert got is not None and got.value == f'"{kind.value}"' and got.kind is kind


async def test_values_and_keys_kept_exactly(store: SqliteStore) -> None:
    r = rec(Kind.OVERRIDE, "[xn--bcher-kva.example]:587", '{"c": "ünï\\n\'\\"", "x": null}', 1.5)
    await store.put(r)
    assert await store.get(Kind.OVERRIDE, r.key) == r


async def test_delete(store: SqliteStore) -> None:
    await store.put(rec(Kind.STS, "a"))
    assert await store.delete(Kind.STS, "a") is True
    assert await store.delete(Kind.STS, "a") is False
    assert await store.get(Kind.STS, "a") is None
    assert await store.delete(Kind.PROBE, "never") is False


async def test_scan_includes_expired(store: SqliteStore) -> None:
    await store.put(rec(Kind.PROBE, "a", expires=1.0))
    await store.put(rec(Kind.PROBE, "b", expires=None))
    await store.put(rec(Kind.ANSWER, "c"))
    got = sorted(await store.scan(Kind.PROBE), key=lambda r: r.key)
    assert got == [rec(Kind.PROBE, "a", expires=1.0), rec(Kind.PROBE, "b", expires=None)]
    assert await store.scan(Kind.STS) == []


async def test_flush_all_keeps_overrides(store: SqliteStore) -> None:
    for kind in Kind:
        await store.put(rec(kind, "a"))
        await store.put(rec(kind, "b"))
    assert await store.flush(None) == 2 * (len(Kind) - 1)
    assert sorted(r.key for r in await store.scan(Kind.OVERRIDE)) == ["a", "b"]
    for kind in Kind:
        if kind is not Kind.OVERRIDE:
            assert await store.scan(kind) == []


async def test_flush_one_key_keeps_overrides_and_others(store: SqliteStore) -> None:
    for kind in Kind:
        await store.put(rec(kind, "a"))
        await store.put(rec(kind, "b"))
    assert await store.flush("a") == len(Kind) - 1
    assert await store.get(Kind.OVERRIDE, "a") is not None
    assert await store.get(Kind.ANSWER, "a") is None
    assert await store.get(Kind.ANSWER, "b") is not None
    assert await store.flush("a") == 0
    assert await store.flush("missing") == 0


# --- events -----------------------------------------------------------------------------


async def test_events_in_order_since(store: SqliteStore) -> None:
    await check_events_in_append_order(store)


async def test_events_pruned(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_sqlite, "MAX_EVENTS", 10)
    for i in range(1, 1001):
        await store.append_event(event(float(i), "k", str(i)))
    got = await store.events(0.0)
    assert [e.reason for e in got] == [str(i) for i in range(991, 1001)]


# --- persistence, schema, damaged files ---------------------------------------------------


async def test_reopen_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "dir" / "policyd.db"  # parent directories are created
    s = await SqliteStore.open(url(db))
    await s.put(rec(Kind.OVERRIDE, "example.com"))
    await s.append_event(event(1.0, "example.com", "x"))
    await s.close()
    s = await SqliteStore.open(url(db))
    assert await s.get(Kind.OVERRIDE, "example.com") == rec(Kind.OVERRIDE, "example.com")
    assert await s.events(0.0) == [event(1.0, "example.com", "x")]
    await s.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_memory_store() -> None:
    s = await SqliteStore.open("sqlite://:memory:")
    await s.put(rec(Kind.ANSWER, "a"))
    assert await s.get(Kind.ANSWER, "a") == rec(Kind.ANSWER, "a")
    await s.close()


async def test_migrates_from_version_zero(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    s = await SqliteStore.open(url(db))
    await s.put(rec(Kind.ANSWER, "a"))
    await s.close()
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"unrelated", "records", "events"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_failed_migration_is_store_error_and_rolled_back(tmp_path: Path) -> None:
    db = tmp_path / "clash.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events (x)")  # clashes with migration 1
    conn.commit()
    conn.close()
    with pytest.raises(StoreError):
        await SqliteStore.open(url(db))
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "records" not in tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


def _make_future_db(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE records (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    _make_future_db(db)
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(url(db))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


async def test_newer_schema_file_left_untouched(tmp_path: Path) -> None:
    """ "Refusing to touch it" must hold byte for byte: no switch to WAL before the check."""
    db = tmp_path / "future.db"
    _make_future_db(db)
    before = db.read_bytes()
    with pytest.raises(StoreError):
        await SqliteStore.open(url(db))
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.db"]


@pytest.mark.parametrize("size", [1, 100, 4096, 65536])
async def test_corrupt_file_raises_and_is_left_untouched(tmp_path: Path, size: int) -> None:
    db = tmp_path / "policyd.db"
    junk = os.urandom(size)
    if junk.startswith(b"SQLite format 3\x00"):  # pragma: no cover - 2**-128
        junk = b"x" + junk[1:]
    db.write_bytes(junk)
    with pytest.raises(StoreError):
        await SqliteStore.open(url(db))
    assert db.read_bytes() == junk


async def test_damaged_database_raises_and_is_left_untouched(tmp_path: Path) -> None:
    """A real database whose pages were overwritten: the header is fine, the tree is not."""
    db = tmp_path / "policyd.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(200)])
    conn.commit()
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page : page + 64] = b"\xff" * 64  # smash the first b-tree page after the header
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        await SqliteStore.open(url(db))
    assert db.read_bytes() == bytes(data)


async def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError):
        await SqliteStore.open(url(tmp_path / "dir.db"))


async def test_parent_is_a_file_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        await SqliteStore.open(url(tmp_path / "file" / "policyd.db"))


async def test_use_after_close_is_store_error(tmp_path: Path) -> None:
    s = await SqliteStore.open(url(tmp_path / "p.db"))
    await s.close()
    with pytest.raises(StoreError):
        await s.get(Kind.ANSWER, "a")


async def test_close_twice(tmp_path: Path) -> None:
    s = await SqliteStore.open(url(tmp_path / "p.db"))
    await s.close()
    await s.close()


# --- every sqlite3 error is a StoreError (review M2) -------------------------------------


async def test_write_to_a_read_only_database_is_a_store_error(store: SqliteStore) -> None:
    def read_only() -> None:
        assert store._db is not None
        store._db.execute("PRAGMA query_only = 1")

    await store._run(read_only)
    with pytest.raises(StoreError, match="readonly"):
        await store.put(rec(Kind.STS, "a.example"))
    with pytest.raises(StoreError):
        await store.append_event(event(1.0, "a.example", "x"))
    with pytest.raises(StoreError):
        await store.write_batch([rec(Kind.STS, "a.example")], [event(1.0, "a", "x")])
    with pytest.raises(StoreError):
        await store.delete_expired(1000.0)


async def test_damaged_file_after_open_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "policyd.db"
    s = await SqliteStore.open(url(path))
    for i in range(200):
        await s.put(rec(Kind.PROBE, f"k{i}.example", "x" * 500))

    def to_disk() -> None:
        assert s._db is not None
        s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s._db.execute("PRAGMA cache_size = 0")  # read pages from the file again

    await s._run(to_disk)
    # overwrite the table pages behind SQLite's back (a bad restore, a disk error)
    with path.open("r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xde\xad\xbe\xef" * 4096)
    with pytest.raises(StoreError):
        await s.scan(Kind.PROBE)
    await s.close()


async def test_write_batch_is_one_transaction(store: SqliteStore) -> None:
    await store.write_batch(
        [rec(Kind.ANSWER, "a.example"), rec(Kind.ANSWER, "b.example")],
        [event(1.0, "a.example", "one"), event(2.0, "b.example", "two")],
    )
    assert {r.key for r in await store.scan(Kind.ANSWER)} == {"a.example", "b.example"}
    assert await store.events(0.0) == [
        event(1.0, "a.example", "one"),
        event(2.0, "b.example", "two"),
    ]
    # a failing batch leaves nothing behind: the second row violates NOT NULL
    bad = Record(Kind.ANSWER, "c.example", None, 1.0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.write_batch([rec(Kind.ANSWER, "d.example"), bad], [event(3.0, "d", "x")])
    assert {r.key for r in await store.scan(Kind.ANSWER)} == {"a.example", "b.example"}
    assert len(await store.events(0.0)) == 2


async def test_write_batch_carries_every_column_exactly(store: SqliteStore) -> None:
    # The batch travels as JSON (one statement per kind of row): text that JSON escapes,
    # times to the last bit, and times JSON cannot carry, come back as SQLite stored them
    # through bound parameters (a NaN and an infinite expiry: none, "never").
    awkward = '{"reason": "quote \\" backslash \\\\ \u00e9 \u2713 \\u0000", "n": [1, 2]}'
    expiries = {"a.example": 1.0000000000000002e9, "b.example": None, "c.example": 5}
    odd = {"nan.example": float("nan"), "inf.example": float("inf")}
    records = [Record(Kind.STS, k, awkward, e) for k, e in (expiries | odd).items()]
    events = [event(1765000000.123456789 + i, f"k{i}.example", awkward) for i in range(300)]
    await store.write_batch(records, events)
    got = {r.key: r for r in await store.scan(Kind.STS)}
    assert {k: got[k].expires_at for k in expiries} == expiries
    assert all(got[k].value == awkward for k in got)
    assert got["nan.example"].expires_at is None and got["inf.example"].expires_at is None
    assert await store.events(0.0) == events  # in order, every field intact


async def test_write_batch_keeps_the_event_log_bounded(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_sqlite, "MAX_EVENTS", 10)
    for batch in range(5):
        await store.write_batch([], [event(float(batch * 10 + i), "k", "e") for i in range(10)])
    assert len(await store.events(0.0)) == 10


async def test_delete_expired_keeps_overrides_and_live_records(store: SqliteStore) -> None:
    await store.put(rec(Kind.PROBE, "old.example", expires=50.0))
    await store.put(rec(Kind.STS, "live.example", expires=500.0))
    await store.put(rec(Kind.STS, "forever.example", expires=None))
    await store.put(rec(Kind.OVERRIDE, "ov.example", expires=50.0))
    assert await store.delete_expired(100.0) == 1
    assert await store.get(Kind.PROBE, "old.example") is None
    assert await store.get(Kind.STS, "live.example") is not None
    assert await store.get(Kind.STS, "forever.example") is not None
    assert await store.get(Kind.OVERRIDE, "ov.example") is not None


# --- records that do not parse ----------------------------------------------------------


async def test_malformed_rows_are_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite columns take any type: a hand-edited row must be skipped, not crash a reader.
    db = tmp_path / "policyd.db"
    s = await SqliteStore.open(url(db))
    await s.put(rec(Kind.PROBE, "good.example"))
    await s.close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO records VALUES ('probe', 'blob.example', x'00ff', NULL)")
        conn.execute("INSERT INTO records VALUES ('probe', 'when.example', '{}', 'tomorrow')")
        conn.execute("INSERT INTO records VALUES ('probe', x'07', '{}', NULL)")
    conn.close()
    s = await SqliteStore.open(url(db))
    try:
        with caplog.at_level("WARNING"):
            got = await s.scan(Kind.PROBE)
            assert await s.get(Kind.PROBE, "when.example") is None
        assert got == [rec(Kind.PROBE, "good.example")]
        assert "'blob.example': skipped: malformed row" in caplog.text
        assert "'when.example': skipped: malformed row" in caplog.text
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def _edited(tmp_path: Path, first: Event, *sql: str) -> AsyncIterator[SqliteStore]:
    """A store holding ``first``, then changed behind its back (a hand edit, a damaged row,
    rows of an earlier version) by ``sql``, and opened again."""
    db = tmp_path / "policyd.db"
    s = await SqliteStore.open(url(db))
    await s.append_event(first)
    await s.close()
    with sqlite3.connect(db) as conn:
        for statement in sql:
            conn.execute(statement)
    conn.close()
    s = await SqliteStore.open(url(db))
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("first", "sql"),
    [
        pytest.param(
            event(1.0, "a.example", "first"),
            (
                "INSERT INTO events (at, key, text) VALUES ('yesterday', 'x', 'y')",
                "INSERT INTO events (at, key, text) VALUES (2.0, 'x', x'00ff')",
            ),
            id="malformed-rows",
        ),
        # A database written by the previous version keeps its event rows as one line of
        # text, which cannot be read back safely (D3): report goes on without them.
        pytest.param(
            event(3.0, "b.example", "new"),
            (
                "INSERT INTO events (at, key, text) VALUES"
                " (1.0, 'a.example', 'level=dane-only reason=dane: usable TLSA'),"
                " (2.0, 'a.example', 'level=encrypt reason=probe: encrypt previous=dane-only')",
            ),
            id="previous-text-format",
        ),
    ],
)
async def test_event_rows_not_of_this_version_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first: Event, sql: tuple[str, ...]
) -> None:
    async with _edited(tmp_path, first, *sql) as s:
        with caplog.at_level("WARNING"):
            assert await s.events(0.0) == [first]
        assert "2 events skipped: not an event of this version" in caplog.text


async def test_event_column_at_disagreeing_with_its_event(tmp_path: Path) -> None:
    # "tomorrow" sorts after every number: the event's own time decides.
    async with _edited(
        tmp_path, event(1.0, "a.example", "old"), "UPDATE events SET at = 'tomorrow'"
    ) as s:
        assert await s.events(0.0) == [event(1.0, "a.example", "old")]
        assert await s.events(2.0) == []


async def test_start_up_loaders_skip_records_that_do_not_parse(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A 400-digit JSON integer raised OverflowError, which the loaders did not catch: the
    # daemon exited at start (and with Redis, every host of the fleet did).
    huge = "1" + "0" * 400
    good = probe_state_to_json(ProbeState(ProbeLevel.VERIFY, probed_at=1.0))
    await store.put(rec(Kind.PROBE, "good.example", good, None))
    await store.put(
        rec(
            Kind.PROBE, "huge.example", good.replace('"probed_at":1.0', f'"probed_at":{huge}'), None
        )
    )
    await store.put(rec(Kind.OVERRIDE, "good.example", '{"policy": "encrypt"}', None))
    await store.put(
        rec(Kind.OVERRIDE, "huge.example", f'{{"policy": "encrypt", "expires_at": {huge}}}', None)
    )
    probe = ProbeSource(store, FakeProber(), ProbeSettings(), clock=lambda: 2.0)
    service = PolicyService(
        DEFAULT_PROFILES, store, FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    with caplog.at_level("WARNING"):
        await probe.load()
        await service.load_overrides()
    assert probe.cached("good.example") is not None
    assert probe.cached("huge.example") is None
    assert set(service.overrides) == {"good.example"}
    assert "huge.example: stored probe result ignored: probe record probed_at is out of range" in (
        caplog.text
    )
    assert "huge.example: ignoring unreadable override" in caplog.text


async def test_flush_keeps_mta_sts_policies_unless_asked(store: SqliteStore) -> None:
    # Security review L7: cached policies are trust on first use (RFC 8461 5).
    for kind in Kind:
        await store.put(rec(kind, "a"))
        await store.put(rec(kind, "b"))
    assert await store.flush("a", mta_sts=False) == len(Kind) - 2
    assert await store.get(Kind.STS, "a") is not None
    assert await store.flush(None, mta_sts=False) == len(Kind) - 2
    assert len(await store.scan(Kind.STS)) == 2
    assert await store.flush(None) == 2
    assert await store.scan(Kind.STS) == []


async def test_new_database_is_not_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    """Security review L5: outside systemd the process umask (often 022) must not decide."""
    old = os.umask(0)
    try:
        store = await SqliteStore.open(f"sqlite:///{tmp_path}/new.db")
        await store.put(Record(Kind.OVERRIDE, "a.example", "{}", None))
        await store.close()
    finally:
        os.umask(old)
    for name in ("new.db", "new.db-wal", "new.db-shm"):
        path = tmp_path / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == store_sqlite.DB_MODE, name
