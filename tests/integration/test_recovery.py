"""Startup recovery: open runs left by a crashed process end as error_500 / interrupted."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from app.commands import finish_run, fire_run
from app.commands.finish_run import FinishRun
from app.commands.fire_run import FireRun
from app.events.run import RunState, evolve
from app.events.select import open_event_store
from app.projections import runs
from app.projections.db import open_read_db, read_db_path
from app.recovery import sweep_interrupted
from app.telemetry import Records


def fire(store, session_id=""):  # type: ignore[no-untyped-def]
    run_id = uuid4()
    cmd = FireRun(
        run_id=run_id,
        at=datetime.now(UTC),
        session_id=session_id,
        route="chat_completions",
        model="bmo/local",
        stream=True,
        tool_policy="chat_only",
        ambiguity_action="ask",
        is_session_reuse=bool(session_id),
        client_ua="ua",
    )
    events = fire_run.decide(RunState(run_id), cmd)
    store.save(events)
    return run_id, evolve(RunState(run_id), events[0])


def test_sweep_finishes_only_open_runs_once(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    open_id, _ = fire(store, "s-1")
    done_id, state = fire(store)
    store.save(
        finish_run.decide(
            state,
            FinishRun(
                run_id=done_id, at=datetime.now(UTC), outcome="final_answer", status_code=200, elapsed_ms=1
            ),
        )
    )
    stderr = io.StringIO()
    records = Records(tmp_path / "log.jsonl", stderr=stderr)
    swept = sweep_interrupted(store, read_db_path(tmp_path), records, capacity=100)
    records.flush()
    assert swept == [open_id.hex]
    conn = open_read_db(read_db_path(tmp_path)).conn
    row = runs.get_run(conn, open_id.hex)
    assert row is not None and row["outcome"] == "error_500" and row["error"] == "interrupted"
    assert runs.get_run(conn, done_id.hex)["outcome"] == "final_answer"  # type: ignore[index]
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert record["msg"] == "openai_compat.action" and record["level"] == "warn"
    assert record["request_id"] == open_id.hex and record["session_id"] == "s-1"
    assert record["reason"] == "interrupted"
    # a second sweep finds nothing
    assert sweep_interrupted(store, read_db_path(tmp_path), records, capacity=100) == []


def test_sweep_frees_the_sessions_of_interrupted_runs(tmp_path: Path) -> None:
    from app.commands import admit_run
    from app.commands.admit_run import AdmitRun
    from app.events.session import SessionState, session_uuid
    from app.events.session import fold as session_fold

    store = open_event_store(tmp_path)
    active_id, _ = fire(store, "s-9")
    queued_id, _ = fire(store, "s-9")
    stream_id = session_uuid("s-9")

    def admit(run_id: str, queued: str) -> None:
        state = session_fold(stream_id, store.stream(stream_id))
        store.save(
            admit_run.decide(
                state,
                AdmitRun(
                    stream_id=stream_id,
                    at=datetime.now(UTC),
                    session_id="s-9",
                    run_id=run_id,
                    queued_run_id=queued,
                    model="bmo/local",
                    requester="",
                    max_queue_depth=4,
                ),
            )
        )

    admit(active_id.hex, "unused")
    admit("unused", queued_id.hex)
    busy = session_fold(stream_id, store.stream(stream_id))
    assert busy.active_run == active_id.hex and busy.queue == (queued_id.hex,)
    records = Records(tmp_path / "log.jsonl", stderr=io.StringIO())
    swept = sweep_interrupted(store, read_db_path(tmp_path), records, capacity=100)
    assert set(swept) == {active_id.hex, queued_id.hex}
    free = session_fold(stream_id, store.stream(stream_id))
    assert isinstance(free, SessionState) and free.active_run is None and free.queue == ()
