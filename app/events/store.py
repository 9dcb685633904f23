"""The single eventsourcing Application that holds every stream.

The application `name` is persisted in nothing but is part of the environment
key prefix: it is fixed as "bmo" and never renamed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import Notification, Transcoder

from app.events.sqlite_append import RowMapper, append_rows
from app.events.transcoder import MsgspecTranscoder

__all__ = ["EventStore"]


class _BmoApplication(Application[UUID]):
    name = "bmo"
    is_snapshotting_enabled = False

    def construct_transcoder(self) -> Transcoder:
        """eventsourcing's JSON format, written and read by msgspec (app/events/transcoder.py)."""
        transcoder = MsgspecTranscoder()
        self.register_transcodings(transcoder)
        return transcoder


class EventStore:
    """A thin, synchronous facade: save events, read streams and the log.

    Every method blocks on SQLite; async callers go through the writer or
    `asyncio.to_thread`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._app = _BmoApplication(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(path),
                "SQLITE_LOCK_TIMEOUT": "10",
            }
        )
        _use_synchronous_normal(self._app)
        self._rows = _row_mapper(self._app)

    def save(self, events: Sequence[DomainEvent]) -> int:
        """Append events atomically; returns the last notification id.

        The rows eventsourcing's mapper and recorder would write, written without their
        per-event layers (app/events/sqlite_append.py): `Application.save` would first sort
        each event through runtime-checkable Protocol `isinstance` checks, `put` builds
        a `StoredEvent`, a `Recording` and a `Notification` per event and three context
        managers per transaction, together as much CPU as the inserts (measured in
        docs/performance-analysis.md)."""
        if self._rows is None:  # a compressor or cipher configured: eventsourcing maps
            return self._put(events)
        if not events:
            return 0
        recorder = self._app.recorder
        rows = [self._rows.row(event) for event in events]
        return append_rows(recorder.datastore.pool, recorder.insert_events_statement, rows)  # type: ignore[attr-defined]

    def _put(self, events: Sequence[DomainEvent]) -> int:
        """Through eventsourcing's event store: its mapper, its recorder, one transaction."""
        recordings = self._app.events.put(list(events))
        return max((r.notification.id for r in recordings), default=0)

    def stream(self, stream_id: UUID, after_version: int = 0) -> list[DomainEvent]:
        gt = after_version if after_version > 0 else None
        return cast("list[DomainEvent]", list(self._app.repository.event_store.get(stream_id, gt=gt)))

    def notifications(self, after: int, limit: int) -> Sequence[Notification]:
        return self._app.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)

    def to_event(self, notification: Notification) -> DomainEvent:
        return cast(DomainEvent, self._app.mapper.to_domain_event(notification))

    def identity_at(self, notification_id: int) -> tuple[str, int] | None:
        """(stream id as hex, version) of the event stored at `notification_id`, if any."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            row = conn.execute(
                "SELECT originator_id, originator_version FROM stored_events WHERE rowid = ?",
                (notification_id,),
            ).fetchone()
        return None if row is None else (UUID(str(row[0])).hex, int(row[1]))

    def max_notification_id(self) -> int:
        return self._app.recorder.max_notification_id() or 0

    def streams_with(self, topic: str) -> list[UUID]:
        """Ids of the streams that hold an event of `topic` (e.g. every session)."""
        with sqlite3.connect(self.path, timeout=10) as conn:
            rows = conn.execute(
                "SELECT DISTINCT originator_id FROM stored_events WHERE topic = ?", (topic,)
            ).fetchall()
        return [UUID(str(r[0])) for r in rows]

    def check_writable(self) -> None:
        """Raise if the store cannot take a write lock right now."""
        with sqlite3.connect(self.path, timeout=0.5) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")

    def close(self) -> None:
        self._app.close()


def _row_mapper(app: Application[Any]) -> RowMapper | None:
    """The direct mapping, unless the environment configured a compressor or a cipher."""
    mapper = app.mapper
    if mapper.compressor is not None or mapper.cipher is not None:
        return None
    return RowMapper(mapper.transcoder.encode)


def _use_synchronous_normal(app: Application[Any]) -> None:
    """eventsourcing leaves SQLite at synchronous=FULL (an fsync per commit).

    In WAL mode NORMAL is ~3x faster and still survives a process crash; only
    an OS crash or power loss can drop the last commits. Chosen on purpose.

    The Application has already opened (and pooled) a connection to create its
    table by the time this runs: that one is switched too, or every commit made
    through it would still fsync (it is the one a lone writer thread reuses).
    """
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    create = pool._create_connection

    def create_normal() -> Any:
        connection = create()
        connection._sqlite_conn.execute("PRAGMA synchronous=NORMAL")
        return connection

    pool._create_connection = create_normal
    with pool._put_condition:
        for connection in pool._pool:
            connection._sqlite_conn.execute("PRAGMA synchronous=NORMAL")
