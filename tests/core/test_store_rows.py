"""The store's own append path writes exactly what eventsourcing's `put` wrote.

`EventStore.save` maps and inserts events itself (app/events/sqlite_append.py) instead
of going through eventsourcing's mapper, recorder and recordings. The rows it leaves
(notification id, originator id, version, topic, state bytes), its atomicity and the
errors it raises must be eventsourcing's, or old stores, the projector and the writer's
conflict handling would see a difference.
"""

from __future__ import annotations

import copy
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError, OperationalError

from app.events.store import EventStore
from tests.data.replay.replay import FIXTURE_DIR


def every_kind_of_event(tmp_path: Path) -> list[DomainEvent]:
    """The replay fixture's events (every run and session kind a real server wrote), in order."""
    copied = tmp_path / "fixture.db"
    shutil.copy(FIXTURE_DIR / "events.db", copied)
    store = EventStore(copied)
    try:
        return [store.to_event(n) for n in store.notifications(0, 100_000)]
    finally:
        store.close()


def table(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT rowid, * FROM stored_events ORDER BY rowid").fetchall()


@pytest.mark.parametrize("batch", [1, 2, 5, 1000])
def test_save_leaves_the_rows_and_ids_eventsourcings_put_leaves(tmp_path: Path, batch: int) -> None:
    events = every_kind_of_event(tmp_path)
    assert len({type(e) for e in events}) >= 15  # the fixture covers the kinds; not a toy sample
    ours, theirs = EventStore(tmp_path / "ours.db"), EventStore(tmp_path / "theirs.db")
    try:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            assert ours.save(chunk) == theirs._put(chunk)  # same last notification id, batch by batch
    finally:
        ours.close()
        theirs.close()
    assert table(tmp_path / "ours.db") == table(tmp_path / "theirs.db")
    assert table(tmp_path / "ours.db")[-1][0] == len(events)


@dataclass(frozen=True)
class Versioned(DomainEvent):
    """An upcast-style event: eventsourcing stores its class_version in the state."""

    class_version = 3
    note: str


def test_a_class_version_above_one_is_stored_as_the_mapper_stores_it(tmp_path: Path) -> None:
    event = Versioned(
        originator_id=uuid4(), originator_version=1, timestamp=Versioned.create_timestamp(), note="n"
    )
    ours, theirs = EventStore(tmp_path / "ours.db"), EventStore(tmp_path / "theirs.db")
    try:
        ours.save([event])
        theirs._put([event])
        assert ours.stream(event.originator_id) == [event]
    finally:
        ours.close()
        theirs.close()
    assert table(tmp_path / "ours.db") == table(tmp_path / "theirs.db")
    assert b'"class_version":3' in table(tmp_path / "ours.db")[0][4]


def test_a_batch_with_a_conflict_stores_nothing_and_raises_eventsourcings_integrity_error(
    tmp_path: Path,
) -> None:
    events = every_kind_of_event(tmp_path)
    store = EventStore(tmp_path / "events.db")
    try:
        store.save(events[:3])
        fresh = copy.copy(events[3])
        with pytest.raises(IntegrityError):  # the writer tells a conflict by this class
            store.save([fresh, events[1]])  # events[1] is already stored: the whole batch fails
        assert [r[0] for r in table(tmp_path / "events.db")] == [1, 2, 3]
        assert store.save([fresh]) == 4  # the connection is usable again: rolled back, not left open
    finally:
        store.close()


def test_a_store_that_cannot_write_raises_eventsourcings_operational_error(tmp_path: Path) -> None:
    events = every_kind_of_event(tmp_path)
    store = EventStore(tmp_path / "events.db")
    blocker = sqlite3.connect(tmp_path / "events.db", timeout=0)
    try:
        store._app.recorder.datastore.pool._pool[0]._sqlite_conn.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(OperationalError, match="locked"):
            store.save(events[:2])
        blocker.execute("ROLLBACK")
        assert store.save(events[:2]) == 2  # and saves once the lock is free
    finally:
        blocker.close()
        store.close()


def test_nothing_to_save_touches_nothing(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    try:
        assert store.save([]) == 0
    finally:
        store.close()
    assert table(tmp_path / "events.db") == []


def test_a_configured_compressor_is_honoured_through_eventsourcings_mapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = every_kind_of_event(tmp_path)[:3]
    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    store = EventStore(tmp_path / "events.db")
    try:
        assert store.save(events) == 3
        assert store.stream(events[0].originator_id) == [
            e for e in events if e.originator_id == events[0].originator_id
        ]
    finally:
        store.close()
    assert not table(tmp_path / "events.db")[0][4].startswith(b"{")  # compressed, not plain JSON


class _BusyAtCommit:
    """A connection whose COMMIT fails the way SQLITE_BUSY does: the transaction stays open."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def commit(self) -> None:
        raise sqlite3.OperationalError("database is locked")


def test_a_commit_that_fails_busy_leaves_no_transaction_open_on_the_connection(tmp_path: Path) -> None:
    """Else the pooled writer connection keeps the write lock and every later save fails."""
    from app.events.sqlite_append import _insert_and_commit

    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (a INTEGER)")
    cursor = conn.cursor()
    with pytest.raises(OperationalError, match="locked"):
        _insert_and_commit(_BusyAtCommit(conn), cursor, "INSERT INTO t VALUES (?)", [(1,)])  # type: ignore[arg-type]
    assert not conn.in_transaction
    assert _insert_and_commit(conn, cursor, "INSERT INTO t VALUES (?)", [(2,)]) > 0
    assert conn.execute("SELECT a FROM t").fetchall() == [(2,)]
