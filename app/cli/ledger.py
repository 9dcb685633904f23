"""The CLI's view of the read models: catch up from the event store, then query.

Works with or without a running server (the projector serialises with any
server's projector through the read-model write lock).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.events.store import open_event_store
from app.projections.db import read_db_path
from app.projections.runner import ProjectionRunner

__all__ = ["open_ledger"]


def open_ledger(data_dir: Path, capacity: int) -> sqlite3.Connection:
    """A read connection on up-to-date read models (caught up from the store first)."""
    if not (data_dir / "events.db").exists():
        raise FileNotFoundError(f"no event store at {data_dir / 'events.db'} (has bmo served anything here?)")
    store = open_event_store(data_dir)
    try:
        runner = ProjectionRunner(store, read_db_path(data_dir), ledger_capacity=capacity)
        runner.catch_up()
        runner.close()
    finally:
        store.close()
    conn = sqlite3.connect(read_db_path(data_dir))
    conn.row_factory = sqlite3.Row
    return conn
