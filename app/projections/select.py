"""Which read models go with which event store: the one place that decides.

SQLite events keep their read models in `read_models.db` under the data dir;
PostgreSQL events keep theirs in the same database, so every instance serves
the same ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.events.store import EventStore
from app.projections.db import open_read_db, reset_read_models
from app.projections.follower import ProjectionFollower
from app.projections.runner import ProjectionRunner

__all__ = ["projection_follower", "projection_runner", "read_connection", "reset_read_models_of"]


def _pg(store: EventStore) -> Any:
    """The PostgreSQL store, or None (imported only when one is in use)."""
    if getattr(store, "url", ""):
        return store
    return None


def projection_runner(store: EventStore, db_path: Path, *, ledger_capacity: int, **options: Any) -> Any:
    """A `ProjectionRunner` (or its PostgreSQL twin) for this store."""
    if _pg(store) is not None:
        from app.projections.pg_runner import PgProjectionRunner

        return PgProjectionRunner(store, ledger_capacity=ledger_capacity, **options)  # type: ignore[arg-type]
    return ProjectionRunner(store, db_path, ledger_capacity=ledger_capacity, **options)


def projection_follower(store: EventStore, db_path: Path) -> Any:
    """What a worker uses when the projector runs in a process of its own."""
    if _pg(store) is not None:
        from app.projections.pg_runner import PgProjectionFollower

        return PgProjectionFollower(store)  # type: ignore[arg-type]
    return ProjectionFollower(db_path)


def read_connection(store: EventStore, db_path: Path) -> Any:
    """A sqlite3-shaped connection on the read models (event-loop thread only)."""
    if _pg(store) is not None:
        from app.projections.pg_db import PgReadConn, ensure_schema

        ensure_schema(store.url)  # type: ignore[attr-defined]
        return PgReadConn(store.url)  # type: ignore[attr-defined]
    return open_read_db(db_path).conn


def reset_read_models_of(store: EventStore, db_path: Path) -> None:
    """Drop every read model of this store; the projector rebuilds them from position 0."""
    if _pg(store) is not None:
        from app.projections.pg_db import reset_pg_read_models

        reset_pg_read_models(store.url)  # type: ignore[attr-defined]
        return
    reset_read_models(db_path)
