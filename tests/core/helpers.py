"""Small builders for in-process core tests: real SQLite store, no server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from app.commands import finish_run, fire_run
from app.commands.finish_run import FinishRun
from app.commands.fire_run import FireRun
from app.events.run import RunState, fold
from app.events.store import EventStore
from app.projections.db import read_db_path
from app.projections.runner import ProjectionRunner

__all__ = ["dump", "end", "fire", "fire_cmd", "now", "runner"]


def now() -> datetime:
    return datetime.now(UTC)


def fire_cmd(run_id: UUID, session_id: str = "", route: str = "chat_completions") -> FireRun:
    return FireRun(
        run_id=run_id,
        at=now(),
        session_id=session_id,
        route=route,
        model="bmo/local",
        stream=False,
        tool_policy="chat_only",
        ambiguity_action="ask",
        is_session_reuse=bool(session_id),
        client_ua="ua",
    )


def fire(store: EventStore, session_id: str = "", route: str = "chat_completions") -> UUID:
    run_id = uuid4()
    store.save(fire_run.decide(RunState(run_id), fire_cmd(run_id, session_id, route)))
    return run_id


def end(store: EventStore, run_id: UUID, outcome: str = "final_answer") -> None:
    state = fold(run_id, store.stream(run_id))
    cmd = FinishRun(run_id=run_id, at=now(), outcome=outcome, status_code=200, elapsed_ms=1.0)
    store.save(finish_run.decide(state, cmd))


def runner(store: EventStore, data: Path, **kw: Any) -> ProjectionRunner:
    kw.setdefault("ledger_capacity", 10_000)
    return ProjectionRunner(store, read_db_path(data), **kw)


def dump(r: ProjectionRunner) -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model table, sorted (the tracking row included)."""
    conn = r.read_conn
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {t: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {t}")), key=repr) for t in tables}
