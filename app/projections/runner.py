"""Pull-based projector over the event store's notification log.

Each step runs in one read-model transaction: read the tracking position,
project the next notifications, apply the row operations, advance the
position, commit. A crash never double-applies, and several processes can
run a projector on the same files (BEGIN IMMEDIATE serialises them).
It wakes when the writer commits, with a short poll as a fallback for
events written by other processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eventsourcing.domain import DomainEvent

from app.events.store import EventStore
from app.projections import counts, permissions, runs
from app.projections.db import ReadDb, open_read_db, reset_read_models
from app.projections.notifications import NotificationReader
from app.projections.rows import RowOp, apply_ops
from app.projections.stepping import Stepping

__all__ = ["ProjectionRunner", "project_all"]

NAME = "openai_compat"
Projector = Callable[[DomainEvent, int], list[RowOp]]
_PROJECTORS: tuple[Projector, ...] = (runs.project, counts.project, permissions.project)

log = logging.getLogger(__name__)


def project_all(event: DomainEvent, position: int) -> list[RowOp]:
    return [op for projector in _PROJECTORS for op in projector(event, position)]


class ProjectionRunner(Stepping):
    def __init__(
        self,
        store: EventStore,
        db_path: Path,
        *,
        ledger_capacity: int,
        batch_size: int = 500,
        poll_interval: float = 0.25,
        between_rows_and_tracking: Callable[[], None] = lambda: None,
    ) -> None:
        """`between_rows_and_tracking` is a test seam: raise from it to crash a step mid-way."""
        self._store = store
        self._db = _read_db_behind(store, db_path)
        self._notes = NotificationReader(store)  # after the database: nothing to leak if that fails
        self._capacity = ledger_capacity
        self._batch_size = batch_size
        self._poll = poll_interval
        self._between_rows_and_tracking = between_rows_and_tracking
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self.position = self._read_position()
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stepping: asyncio.Future[bool] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="projector")

    def notify(self, _position: int = 0) -> None:
        self._wake.set()

    @property
    def read_conn(self) -> Any:
        """The runner's own connection (only while no step runs)."""
        return self._db.conn

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._notes.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._stepping is not None:  # never close the database under a running step
            await asyncio.wait({self._stepping}, timeout=10)
        self.close()

    def _woken(self) -> asyncio.Event:
        return self._wake

    def _step(self) -> bool:
        """Apply one batch in one transaction; False when there was nothing new."""
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            position = self._read_position()
            notes = self._notes.read(position, self._batch_size)
            for note_id, event in notes:
                apply_ops(conn, project_all(event, note_id))
            if notes:
                self._between_rows_and_tracking()
                position = notes[-1][0]
                conn.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                    (NAME, position),
                )
                runs.prune(conn, self._capacity)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.position = position
        return bool(notes)

    def _read_position(self) -> int:
        row = self._db.conn.execute(
            "SELECT position FROM projection_tracking WHERE name = ?", (NAME,)
        ).fetchone()
        return row[0] if row else 0


def _read_db_behind(store: EventStore, db_path: Path) -> ReadDb:
    """The read database, rebuilt from the store unless the store still holds what it projected.

    Read models built from commits the store no longer has: a power loss under
    `synchronous=NORMAL` can drop the last commits after the projector read them, and a
    store restored from an older copy has fewer events. Then the lost runs would stay in
    the ledger, and the events that reuse those notification ids would be skipped for
    ever. The last projected event (every event is on a run's timeline, at its
    notification id) must still be the store's event at that id; else the store is the
    truth: the read models are dropped and replayed from it.
    """
    db = open_read_db(db_path)
    row = db.conn.execute("SELECT position FROM projection_tracking WHERE name = ?", (NAME,)).fetchone()
    tracked = row[0] if row else 0
    if tracked == 0 or _still_stored(db, store, tracked):
        return db
    log.warning(
        "read models were built from events the event store no longer holds (projected up to %d, "
        "the store ends at %d): it lost commits or was restored from an older copy; rebuilding them",
        tracked,
        store.max_notification_id(),
    )
    db.close()
    reset_read_models(db_path)
    return open_read_db(db_path)


def _still_stored(db: ReadDb, store: EventStore, position: int) -> bool:
    """Is the event projected at `position` the store's event at that notification id?"""
    stored = store.identity_at(position)
    if stored is None:
        return False
    projected = db.conn.execute(
        "SELECT request_id, version FROM openai_compat_run_events WHERE seq = ?", (position,)
    ).fetchone()
    return projected is None or (projected[0], projected[1]) == stored  # None: pruned, nothing to compare
