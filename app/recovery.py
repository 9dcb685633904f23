"""Startup recovery: runs a crashed process left open end as `error_500`.

Run once by `bmo serve` before any worker starts, so no live run can be
mistaken for an interrupted one. Uses the ordinary decide path (FinishRun),
so a run that did finish is never touched twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from app.commands import drop_queued_run, finish_run, release_run
from app.commands.drop_queued_run import DropQueuedRun
from app.commands.finish_run import FinishRun
from app.commands.release_run import ReleaseRun
from app.events.run import fold
from app.events.session import fold as session_fold
from app.events.session import session_uuid
from app.events.store import EventStore
from app.projections.runner import ProjectionRunner
from app.telemetry import Records

__all__ = ["sweep_interrupted"]

REASON = "interrupted"


def sweep_interrupted(store: EventStore, read_db: Path, records: Records, capacity: int) -> list[str]:
    """Finish every open run; returns their request ids."""
    runner = ProjectionRunner(store, read_db, ledger_capacity=capacity)
    runner.catch_up()
    open_ids = [
        row[0]
        for row in runner.read_conn.execute(
            "SELECT request_id FROM openai_compat_runs WHERE ended_seq IS NULL ORDER BY seq"
        )
    ]
    finished = []
    for request_id in open_ids:
        run_id = UUID(hex=request_id)
        state = fold(run_id, store.stream(run_id))
        events = finish_run.decide(
            state,
            FinishRun(
                run_id=run_id,
                at=datetime.now(UTC),
                outcome="error_500",
                status_code=500,
                elapsed_ms=0.0,
                error=REASON,
            ),
        )
        if not events:
            continue
        store.save(events)
        records.action(
            outcome="error_500",
            terminal=True,
            request_id=request_id,
            session_id=state.session_id,
            route=_route(runner, request_id),
            status_code=500,
            elapsed_ms=0.0,
            error=REASON,
            reason=REASON,
        )
        finished.append(request_id)
    _free_sessions(store, finished)
    runner.catch_up()
    runner.close()
    return finished


def _free_sessions(store: EventStore, swept: list[str]) -> None:
    """Release sessions whose active run was swept; drop swept runs from their queues."""
    swept_ids = set(swept)
    sessions = {fold(UUID(hex=r), store.stream(UUID(hex=r))).session_id for r in swept}
    for session_id in sorted(s for s in sessions if s):
        stream_id = session_uuid(session_id)
        state = session_fold(stream_id, store.stream(stream_id))
        at = datetime.now(UTC)
        for run_id in [r for r in state.queue if r in swept_ids]:
            events = drop_queued_run.decide(
                state, DropQueuedRun(stream_id=stream_id, at=at, run_id=run_id, reason=REASON)
            )
            store.save(events)
            state = session_fold(stream_id, store.stream(stream_id))
        if state.active_run in swept_ids:
            release = ReleaseRun(
                stream_id=stream_id, at=at, run_id=state.active_run, outcome="error_500", turn=[]
            )
            # the queue was emptied of swept runs above, so nothing new is activated here
            store.save(release_run.decide(state, release))


def _route(runner: ProjectionRunner, request_id: str) -> str:
    row = runner.read_conn.execute(
        "SELECT route FROM openai_compat_runs WHERE request_id = ?", (request_id,)
    ).fetchone()
    return row[0] if row else ""
