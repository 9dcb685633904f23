"""Appending events to eventsourcing's SQLite table without its per-event layers.

eventsourcing's `EventStore.put` maps each event to a `StoredEvent`, its recorder
inserts them one statement at a time inside three nested context managers
(datastore transaction, connection transaction, cursor) and the store then wraps
each row again in a `Recording` and a `Notification` that bmo only takes the
largest id of. For a request's five events that machinery cost as much CPU as the
inserts themselves (docs/performance-analysis.md, "third round").

This module writes the very same rows (the mapper's topic, state bytes and
stringified originator id; the recorder's INSERT statement, one per event, so
the notification ids are the ones it would assign) in one transaction, with the
same error translation and the same rollback, through the same connection pool.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing import persistence
from eventsourcing.domain import DomainEvent
from eventsourcing.utils import get_topic

__all__ = ["Row", "RowMapper", "append_rows", "translated"]

Row = tuple[str, int, str, bytes]

# eventsourcing's SQLiteTransaction translates sqlite3's errors in this order.
_TRANSLATIONS: tuple[tuple[type[sqlite3.Error], type[Exception]], ...] = (
    (sqlite3.InterfaceError, persistence.InterfaceError),
    (sqlite3.DataError, persistence.DataError),
    (sqlite3.OperationalError, persistence.OperationalError),
    (sqlite3.IntegrityError, persistence.IntegrityError),
    (sqlite3.InternalError, persistence.InternalError),
    (sqlite3.ProgrammingError, persistence.ProgrammingError),
    (sqlite3.NotSupportedError, persistence.NotSupportedError),
    (sqlite3.DatabaseError, persistence.DatabaseError),
    (sqlite3.Error, persistence.PersistenceError),
)


class RowMapper:
    """`Mapper.to_stored_event` without compressor or cipher, as a plain row.

    The topic and class version are looked up once per event class instead of once
    per event; the state is the event's attributes minus its identity, encoded by
    the application's transcoder, exactly as the mapper does it.
    """

    def __init__(self, encode: Callable[[Any], bytes]) -> None:
        self._encode = encode
        self._kinds: dict[type, tuple[str, int]] = {}

    def row(self, event: DomainEvent) -> Row:
        topic, class_version = self._kind(type(event))
        state = dict(vars(event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        if class_version > 1:
            state["class_version"] = class_version
        stored_id = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        return (stored_id, originator_version, topic, self._encode(state))

    def _kind(self, cls: type) -> tuple[str, int]:
        kind = self._kinds.get(cls)
        if kind is None:
            kind = self._kinds[cls] = (get_topic(cls), getattr(cls, "class_version", 1))
        return kind


def translated(exc: sqlite3.Error) -> Exception:
    """The eventsourcing error eventsourcing's own transaction would have raised for `exc`."""
    for raw, ours in _TRANSLATIONS:
        if isinstance(exc, raw):
            return ours(exc)
    return exc  # pragma: no cover - every sqlite3 error is an sqlite3.Error


def append_rows(pool: Any, statement: str, rows: Sequence[Row]) -> int:
    """Insert `rows` in one transaction on the pool's writer connection; the last rowid.

    Like eventsourcing's `SQLiteTransaction`: `BEGIN`, the inserts, `COMMIT`; a failed
    insert rolls back and raises the translated error, a failed `COMMIT` raises it as
    it is (eventsourcing does not roll back there either).
    """
    connection = pool.get_connection(is_writer=True)
    try:
        sqlite_conn = connection._sqlite_conn
        cursor = sqlite_conn.cursor()
        try:
            return _insert_and_commit(sqlite_conn, cursor, statement, rows)
        finally:
            cursor.close()
    finally:
        pool.put_connection(connection)


def _insert_and_commit(
    conn: sqlite3.Connection, cursor: sqlite3.Cursor, statement: str, rows: Sequence[Row]
) -> int:
    cursor.execute("BEGIN")  # as eventsourcing's: outside the rollback and the translation
    try:
        for row in rows:
            cursor.execute(statement, row)
        last = cursor.lastrowid
    except BaseException as exc:
        _roll_back(conn, exc)
        raise  # _roll_back raises the translated error; this is for the type checker
    try:
        conn.commit()
    except sqlite3.Error as exc:
        _end_open_transaction(conn)
        raise translated(exc) from exc
    return int(last or 0)


def _end_open_transaction(conn: sqlite3.Connection) -> None:
    """A COMMIT that failed with SQLITE_BUSY leaves its transaction open (SQLite documents
    it): rolled back here, or the pooled writer connection would go back to the pool holding
    the write lock, and every later save would fail with "cannot start a transaction within
    a transaction" until a restart. Its own failure changes nothing for the caller."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()


def _roll_back(conn: sqlite3.Connection, exc: BaseException) -> None:
    """Roll back, then raise `exc` translated (an error of the rollback itself is translated too)."""
    try:
        conn.rollback()
    except sqlite3.Error as rollback_error:
        raise translated(rollback_error) from rollback_error
    if isinstance(exc, sqlite3.Error):
        raise translated(exc) from exc
