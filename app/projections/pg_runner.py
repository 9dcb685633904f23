"""The projector and its follower on PostgreSQL.

Same contract as the SQLite `ProjectionRunner`: each step is one transaction
that reads the tracking position, applies the next notifications' row
operations, advances the position and commits. Several instances each run a
projector on the one database: a transaction-scoped advisory lock makes them
take turns, so rows are applied exactly once whoever gets there first. Each
step `NOTIFY`s its new position (delivered on commit), and a projector wakes
on the store's own insert notifications: no instance polls to learn that
another one wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import Any

import psycopg

from app.events.postgres_store import EVENTS_CHANNEL, PostgresEventStore
from app.projections import runs
from app.projections.pg_db import PROJECTED_CHANNEL, PgReadConn, apply_pg_ops, ensure_schema, translate
from app.projections.runner import NAME, project_all
from app.projections.stepping import Stepping

__all__ = ["PgProjectionFollower", "PgProjectionRunner"]

log = logging.getLogger(__name__)
_PROJECTOR_LOCK = zlib.crc32(b"bmo projector")
_POSITION = "SELECT position FROM projection_tracking WHERE name = ?"


class _Wakeup:
    """An asyncio.Event set from the store's listener thread (thread-safe hand-off)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()

    def set_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.event.set)


class PgProjectionRunner(Stepping):
    """The `ProjectionRunner` interface over read models in PostgreSQL."""

    def __init__(
        self,
        store: PostgresEventStore,
        *,
        ledger_capacity: int,
        batch_size: int = 500,
        poll_interval: float = 1.0,  # a fallback only: NOTIFY wakes it
    ) -> None:
        self._store = store
        ensure_schema(store.url)
        self._db = PgReadConn(store.url)
        self._capacity = ledger_capacity
        self._batch_size = batch_size
        self._poll = poll_interval
        self._wake = _Wakeup()
        self._advanced = asyncio.Event()
        self.position = self._read_position()
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stepping: asyncio.Future[bool] | None = None

    def start(self) -> None:
        self._wake.bind()
        self._store.listen((EVENTS_CHANNEL,), lambda _c, _p: self._wake.set_threadsafe())
        self._task = asyncio.get_running_loop().create_task(self._run(), name="projector")

    def notify(self, _position: int = 0) -> None:
        self._wake.event.set()

    @property
    def read_conn(self) -> PgReadConn:
        return self._db

    def close(self) -> None:
        self._db.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._stepping is not None:
            await asyncio.wait({self._stepping}, timeout=10)
        self._db.close()

    def _woken(self) -> asyncio.Event:
        return self._wake.event

    def _step(self) -> bool:
        """One batch in one transaction, the projector lock held; False when nothing was new."""
        conn = self._db.connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PROJECTOR_LOCK,))
                position = _position(cur)
                notes = self._store.notifications(position, self._batch_size)
                for note in notes:
                    apply_pg_ops(cur, project_all(self._store.to_event(note), note.id))
                if notes:
                    position = notes[-1].id
                    cur.execute(
                        "INSERT INTO projection_tracking (name, position) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                        (NAME, position),
                    )
                    for sql, params in runs.prune_sql(self._capacity):
                        cur.execute(translate(sql), params)
                    cur.execute("SELECT pg_notify(%s, %s)", (PROJECTED_CHANNEL, str(position)))
        except psycopg.OperationalError:
            self._db.close()  # a restarted server: reconnect on the next step
            raise
        self.position = position
        return bool(notes)

    def _read_position(self) -> int:
        row = self._db.execute(_POSITION, (NAME,)).fetchone()
        return row[0] if row else 0


def _position(cur: Any) -> int:
    cur.execute("SELECT position FROM projection_tracking WHERE name = %s", (NAME,))
    row = cur.fetchone()
    return row[0] if row else 0


class PgProjectionFollower:
    """A worker's view of the projector process: the position, woken by NOTIFY."""

    def __init__(self, store: PostgresEventStore, *, poll_s: float = 0.5) -> None:
        self._store = store
        self._db = PgReadConn(store.url)
        self._poll = poll_s  # a fallback only
        self._wake = _Wakeup()
        self._seen = 0
        self.last_error: str | None = None

    @property
    def position(self) -> int:
        try:
            row = self._db.execute(_POSITION, (NAME,)).fetchone()
        except psycopg.Error as exc:  # not created yet, or the server is away
            self.last_error = str(exc)
            return self._seen
        self._seen = max(self._seen, row[0] if row else 0)
        return self._seen

    def start(self) -> None:
        self._wake.bind()
        self._store.listen((PROJECTED_CHANNEL,), self._on_projected)

    def _on_projected(self, _channel: str, payload: str) -> None:
        if payload.isdigit():
            self._seen = max(self._seen, int(payload))
        self._wake.set_threadsafe()

    def notify(self, _position: int = 0) -> None:
        pass  # the projector process hears the store's NOTIFY itself

    def listening(self) -> bool:
        """Not checked here: workers do not ring a PostgreSQL projector (it hears the store's NOTIFY)."""
        return True

    async def wait_for(self, position: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._wake.event.clear()  # before reading: a NOTIFY after the read still wakes us
            if self._seen >= position or await asyncio.to_thread(lambda: self.position) >= position:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.event.wait(), min(remaining, self._poll))

    async def stop(self) -> None:
        self._db.close()
