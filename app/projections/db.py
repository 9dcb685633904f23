"""The read-model database (plain `sqlite3`).

Everything in it can be dropped and rebuilt by replaying the event store.
Not through sqlite-utils: importing it imports numpy when installed (about
20 MB of RSS in every process that opens the read models: `bmo serve`'s main
process, each worker and the projector), for two pragmas and a table list.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from app.projections.counts import COUNTS_SCHEMA
from app.projections.permissions import PERMISSIONS_SCHEMA, add_missing_columns
from app.projections.runs import RUNS_SCHEMA

__all__ = ["TRACKING_SCHEMA", "ReadDb", "open_read_db", "read_db_path", "reset_read_models"]

TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL
);
"""


def read_db_path(data_dir: Path) -> Path:
    return data_dir / "read_models.db"


@dataclass(frozen=True, slots=True)
class ReadDb:
    """The read-model database: one autocommit connection (`BEGIN` where a batch needs one)."""

    conn: sqlite3.Connection

    def table_names(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        self.conn.close()


def open_read_db(path: Path) -> ReadDb:
    """A connection usable from one thread at a time (never shared concurrently)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(RUNS_SCHEMA + COUNTS_SCHEMA + PERMISSIONS_SCHEMA + TRACKING_SCHEMA)
    add_missing_columns(conn)
    return ReadDb(conn)


def reset_read_models(path: Path) -> None:
    """Drop every read model; the projector rebuilds them from position 0."""
    db = open_read_db(path)
    try:
        for name in db.table_names():
            db.conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    finally:
        db.close()
