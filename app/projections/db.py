"""The read-model database (SQLite through sqlite-utils).

Everything in it can be dropped and rebuilt by replaying the event store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from app.projections.counts import COUNTS_SCHEMA
from app.projections.permissions import PERMISSIONS_SCHEMA, add_missing_columns
from app.projections.runs import RUNS_SCHEMA

__all__ = ["TRACKING_SCHEMA", "open_read_db", "read_db_path", "reset_read_models"]

TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL
);
"""


def read_db_path(data_dir: Path) -> Path:
    return data_dir / "read_models.db"


def open_read_db(path: Path) -> sqlite_utils.Database:
    """A connection usable from one thread at a time (never shared concurrently)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(RUNS_SCHEMA + COUNTS_SCHEMA + PERMISSIONS_SCHEMA + TRACKING_SCHEMA)
    add_missing_columns(conn)
    return db


def reset_read_models(path: Path) -> None:
    """Drop every read model; the projector rebuilds them from position 0."""
    db = open_read_db(path)
    with db.conn:
        for name in db.table_names():
            db[name].drop()
    db.close()
