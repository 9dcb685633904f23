"""Closing runs nobody will finish: at startup, and (on a shared store) for instances gone.

`sweep_interrupted` runs once in `bmo serve` before any worker starts, so no live
run can be mistaken for an interrupted one: it finds the open runs and their
sessions through the read models' own queries (the ledger never prunes an open run,
the timeline never a session's events) and
ends them through the executor, like every other write. `close_run` is the one
way to end an abandoned run; `app/liveness.py` uses it for the runs of expired
instances. The ordinary decide path (FinishRun) makes it idempotent: a run that
did finish is never touched twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from app.commands.drop_queued_run import DropQueuedRun
from app.commands.execute import Executor
from app.commands.finish_run import FinishRun
from app.commands.release_run import ReleaseRun
from app.events.run import Fired, RunState
from app.events.session import SessionState
from app.events.writer import EventWriter
from app.projections import runs
from app.projections.select import projection_runner
from app.telemetry import Records

__all__ = ["REASON", "close_run", "drop_queued", "sweep_interrupted"]

REASON = "interrupted"


def sweep_interrupted(store: Any, read_db: Path, records: Records, capacity: int) -> list[str]:
    """Finish every open run and free the sessions they held; returns their request ids.

    `store` is the event store, handed to the projector and the executor only.
    """
    runner = projection_runner(store, read_db, ledger_capacity=capacity)
    try:
        runner.catch_up()
        return asyncio.run(_sweep(store, runner.read_conn, records))
    finally:
        runner.catch_up()
        runner.close()


async def _sweep(store: Any, conn: Any, records: Records) -> list[str]:
    writer = EventWriter(store)
    writer.start()
    executor = Executor(store, writer)
    try:
        finished = [
            request_id
            for request_id in runs.open_request_ids(conn)
            if (await close_run(executor, records, request_id))[0]
        ]
        for stream_id in runs.session_streams(conn):
            await _free_session(executor, stream_id)
        return finished
    finally:
        await writer.close()


async def close_run(executor: Executor, records: Records, request_id: str) -> tuple[bool, RunState]:
    """End an abandoned run as `error_500` / `interrupted`; (whether this call ended it, its state).

    The state is reloaded first: another writer (its own instance, a sweeper) may have
    appended since this process last saw it.
    """
    run_id = UUID(hex=request_id)
    executor.forget(run_id)
    ended = await executor.execute(
        FinishRun(
            run_id=run_id,
            at=datetime.now(UTC),
            outcome="error_500",
            status_code=500,
            elapsed_ms=0.0,
            error=REASON,
        ),
        durable=True,
    )
    state: RunState = ended.state
    if ended:
        records.action(
            outcome="error_500",
            terminal=True,
            request_id=request_id,
            session_id=state.session_id,
            route=await _route(executor, run_id),
            status_code=500,
            elapsed_ms=0.0,
            error=REASON,
            reason=REASON,
        )
    return bool(ended), state


async def _route(executor: Executor, run_id: UUID) -> str:
    """The route the run was fired on (its `Fired` event; the run state does not keep it)."""
    return next((e.route for e in await executor.events(run_id) if isinstance(e, Fired)), "")


async def _free_session(executor: Executor, stream_id: UUID) -> None:
    """Drop ended runs from the session's queue and release it from an ended active run.

    Covers runs swept just now and runs that ended while their session's release
    was lost (a crash between the two appends), so no session stays busy forever.
    The run a release activates is started by whoever serves the session next.
    """
    state = await executor.session_state(stream_id)
    for run_id in [r for r in state.queue if await _ended(executor, r)]:
        state = await drop_queued(executor, stream_id, run_id)
    if state.active_run and await _ended(executor, state.active_run):
        outcome = (await executor.current(UUID(hex=state.active_run))).outcome
        release = ReleaseRun(
            stream_id=stream_id, at=datetime.now(UTC), run_id=state.active_run, outcome=outcome, turn=[]
        )
        await executor.execute(release, durable=True)  # may activate the next queued run


async def drop_queued(executor: Executor, stream_id: UUID, run_id: str) -> SessionState:
    """Take an ended run out of its session's queue; returns the session's state after."""
    drop = DropQueuedRun(stream_id=stream_id, at=datetime.now(UTC), run_id=run_id, reason=REASON)
    state: SessionState = (await executor.execute(drop, durable=True)).state
    return state


async def _ended(executor: Executor, run_id: str) -> bool:
    return (await executor.current(UUID(hex=run_id))).finished
