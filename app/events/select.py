"""Which event store a process opens: SQLite under the data dir, or PostgreSQL.

Apart from `store.py` so that the store implementations (`store.py`, `faults.py`,
`postgres_store.py`) import nothing of each other but their base: no import cycle.
Only the entry points and the projector open a store (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from app.events.faults import FaultInjectingStore
from app.events.store import EventStore

__all__ = ["open_event_store"]


def open_event_store(
    data_dir: Path, faults: Path | None = None, url: str = "", instance_id: str = ""
) -> EventStore:
    """The store under the data dir, or on PostgreSQL when `url` names a server.

    `faults` enables the append-fault test seam (SQLite only); `instance_id` names
    the serving instance that owns the runs it writes (PostgreSQL only).
    """
    if url:
        from app.events.postgres_store import PostgresEventStore  # psycopg: only when asked for

        return PostgresEventStore(url, instance_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    if faults is not None:
        return FaultInjectingStore(data_dir / "events.db", faults)
    return EventStore(data_dir / "events.db")
