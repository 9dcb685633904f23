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
from app.events.store import EventStore
from app.projections.runner import ProjectionRunner
from app.projections.select import projection_runner
from app.telemetry import Records

__all__ = ["sweep_interrupted"]

REASON = "interrupted"
SESSION_OPENED_TOPIC = "app.events.session:SessionOpened"


def sweep_interrupted(store: EventStore, read_db: Path, records: Records, capacity: int) -> list[str]:
    """Finish every open run; returns their request ids."""
    runner = projection_runner(store, read_db, ledger_capacity=capacity)
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
    _free_sessions(store)
    runner.catch_up()
    runner.close()
    return finished


def _free_sessions(store: EventStore) -> None:
    """Release every session whose active run has ended; drop ended runs from queues.

    Covers runs swept just now and runs that ended while their session's release
    was lost (a crash between the two appends), so no session stays busy forever.
    """
    for stream_id in store.streams_with(SESSION_OPENED_TOPIC):
        state = session_fold(stream_id, store.stream(stream_id))
        at = datetime.now(UTC)
        for run_id in [r for r in state.queue if _ended(store, r)]:
            store.save(
                drop_queued_run.decide(
                    state, DropQueuedRun(stream_id=stream_id, at=at, run_id=run_id, reason=REASON)
                )
            )
            state = session_fold(stream_id, store.stream(stream_id))
        if state.active_run and _ended(store, state.active_run):
            outcome = fold(UUID(hex=state.active_run), store.stream(UUID(hex=state.active_run))).outcome
            release = ReleaseRun(
                stream_id=stream_id, at=at, run_id=state.active_run, outcome=outcome, turn=[]
            )
            store.save(release_run.decide(state, release))  # may activate the next queued run


def _ended(store: EventStore, run_id: str) -> bool:
    return fold(UUID(hex=run_id), store.stream(UUID(hex=run_id))).finished


def _route(runner: ProjectionRunner, request_id: str) -> str:
    row = runner.read_conn.execute(
        "SELECT route FROM openai_compat_runs WHERE request_id = ?", (request_id,)
    ).fetchone()
    return row[0] if row else ""
