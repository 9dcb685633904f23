"""Following a projector that runs in another process.

`bmo serve` runs the one projector in a process of its own (no GIL shared
with request handling; exactly one projector however many workers). A worker
then only needs the projector's position, read from the tracking table,
and rings the projector's doorbell after each of its writer's commits (the
projector sleeps until rung; see `app.projections.doorbell`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from app.projections.doorbell import Doorbell, socket_path
from app.projections.runner import NAME

__all__ = ["ProjectionFollower"]


class ProjectionFollower:
    """The projector-shaped view a worker uses when projection runs elsewhere."""

    def __init__(self, db_path: Path, *, poll_s: float = 0.001) -> None:
        self._db_path = db_path
        self._poll = poll_s
        self._conn: sqlite3.Connection | None = None
        self._bell = Doorbell(socket_path(db_path.parent))
        self.last_error: str | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._poller: asyncio.Task[None] | None = None

    @property
    def position(self) -> int:
        try:
            row = (
                self._connection()
                .execute("SELECT position FROM projection_tracking WHERE name = ?", (NAME,))
                .fetchone()
            )
        except sqlite3.Error as exc:  # not created yet, or locked for a moment
            self.last_error = str(exc)
            return 0
        return row[0] if row else 0

    def start(self) -> None:
        pass  # nothing to run here: the projector process does the work

    def notify(self, _position: int = 0) -> None:
        """The writer committed (its `on_commit`): wake the projector process."""
        self._bell.ring()

    def listening(self) -> bool:
        """The projector process is up and bound to its doorbell (`bmo serve` starts it beside
        the workers): until then this worker's rings are lost and a read waits for its start-up."""
        return self._bell.answered()

    async def wait_for(self, position: int, timeout: float) -> bool:
        """True once the projector reached `position`; False after `timeout` seconds.

        One poller per follower reads the tracking row every `poll_s` (1 ms) while any
        read waits, and releases every waiter it satisfies: the cost is one indexed
        SELECT a tick however many reads wait (a poll per waiter let a few hundred
        waiting probes fill the event loop). At 5 ms the poll alone was most of an
        operator read's median under 500 streams (a projector step takes about
        0.5 ms); nothing polls while no read waits.
        """
        if self.position >= position:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((position, waiter))
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll_while_waited())
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not waiter]

    async def _poll_while_waited(self) -> None:
        while self._waiters:
            await asyncio.sleep(self._poll)
            reached = self.position
            waiting: list[tuple[int, asyncio.Future[None]]] = []
            for position, waiter in self._waiters:
                if waiter.done():
                    continue
                if reached >= position:
                    waiter.set_result(None)
                else:
                    waiting.append((position, waiter))
            self._waiters = waiting

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self._bell.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._db_path, timeout=1, check_same_thread=False)
        return self._conn
