"""Replay a committed event store into fresh read models and dump every table."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from app.events.store import EventStore
from app.projections.db import read_db_path
from app.projections.runner import ProjectionRunner

__all__ = ["EXPECTED", "FIXTURE_DIR", "dump_read_models", "replay", "write_expected"]

FIXTURE_DIR = Path(__file__).resolve().parent
EXPECTED = FIXTURE_DIR / "expected_read_models.json"


def dump_read_models(db: Path) -> dict[str, list[list[Any]]]:
    """Every table's rows, sorted, as plain JSON data."""
    with sqlite3.connect(db) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: sorted([list(r) for r in conn.execute(f"SELECT * FROM {t}")], key=repr) for t in tables}


def replay(events_db: Path, work: Path, *, batch_size: int = 500) -> dict[str, list[list[Any]]]:
    """Copy the store (the fixture is never written), project it all, dump the read models."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(events_db, work / "events.db")
    store = EventStore(work / "events.db")
    runner = ProjectionRunner(store, read_db_path(work), ledger_capacity=10_000, batch_size=batch_size)
    runner.catch_up()
    runner.close()
    store.close()
    return dump_read_models(read_db_path(work))


def write_expected(rows: dict[str, list[list[Any]]]) -> None:
    EXPECTED.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
