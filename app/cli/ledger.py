"""The CLI's view of the read models: catch up from the event store, then query.

Works with or without a running server (the projector serialises with any
server's projector through the read-model write lock).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from app.events.location import StoreUrlError
from app.projections.db import read_db_path
from app.projections.select import projection_runner

__all__ = ["open_ledger"]


def open_ledger(data_dir: Path, capacity: int) -> Any:
    """A read connection on up-to-date read models (caught up from the store first)."""
    from app.cli.projections import configured_store_url, open_store

    try:
        url = configured_store_url()
    except StoreUrlError as exc:  # callers report a missing ledger cleanly; this is one
        raise FileNotFoundError(str(exc)) from exc
    if not url and not (data_dir / "events.db").exists():
        raise FileNotFoundError(f"no event store at {data_dir / 'events.db'} (has bmo served anything here?)")
    store = open_store(data_dir)
    try:
        runner = projection_runner(store, read_db_path(data_dir), ledger_capacity=capacity)
        runner.catch_up()
        if getattr(store, "url", ""):
            return runner.read_conn  # the read models live beside the events
        runner.close()
    finally:
        store.close()
    conn = sqlite3.connect(read_db_path(data_dir))
    conn.row_factory = sqlite3.Row
    return conn
