"""`bmo projections rebuild`: drop the read models and replay every event."""

from __future__ import annotations

import os

from app.config import data_dir
from app.events.store import open_event_store
from app.projections.db import read_db_path, reset_read_models
from app.projections.runner import ProjectionRunner

__all__ = ["rebuild"]


def rebuild(*, ledger_capacity: int = 10_000) -> int:
    """Rebuild every read model from the event store (safe while no server runs)."""
    data = data_dir(dict(os.environ))
    reset_read_models(read_db_path(data))
    store = open_event_store(data)
    runner = ProjectionRunner(store, read_db_path(data), ledger_capacity=ledger_capacity)
    position = runner.catch_up()
    store.close()
    print(f"read models rebuilt from {position} events in {data / 'events.db'}")
    return 0
