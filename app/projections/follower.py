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
        """Poll the tracking row every `poll_s` (1 ms) while a read waits: one indexed SELECT.

        At 5 ms the poll alone was most of an operator read's median under 500 streams
        (the projector itself applies a step in about 0.5 ms); nothing polls while no read waits.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self._poll)
        return True

    async def stop(self) -> None:
        self._bell.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._db_path, timeout=1, check_same_thread=False)
        return self._conn
