"""The store facade and the run fold, field by field."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from uuid import uuid4

from app.commands import fire_run
from app.events import run
from app.events.select import open_event_store
from app.events.store import EventStore
from tests.core.helpers import fire_cmd, now


def events_of_a_full_run() -> list:
    run_id = uuid4()
    at = now()
    fired = fire_run.decide(run.RunState(run_id), fire_cmd(run_id, session_id="s1"))[0]
    rest = [
        run.Queued(
            originator_id=run_id,
            originator_version=2,
            timestamp=at,
            session_id="s1",
            position=1,
            by_request="r",
            messages=[],
            options={},
        ),
        run.Started(originator_id=run_id, originator_version=3, timestamp=at, model="m2", message_count=1),
        run.ModelCalled(
            originator_id=run_id,
            originator_version=4,
            timestamp=at,
            model="m2",
            step=1,
            prompt_tokens=5,
            completion_tokens=2,
            latency_ms=1.0,
            finish_reason="stop",
        ),
        run.ModelCalled(
            originator_id=run_id,
            originator_version=5,
            timestamp=at,
            model="m2",
            step=2,
            prompt_tokens=7,
            completion_tokens=3,
            latency_ms=1.0,
            finish_reason="stop",
        ),
        run.Cancelled(originator_id=run_id, originator_version=6, timestamp=at, reason="x"),
    ]
    return [fired, *rest]


def test_fold_keeps_every_field_of_run_state() -> None:
    events = events_of_a_full_run()
    state = run.fold(events[0].originator_id, events)
    assert state == run.RunState(
        run_id=events[0].originator_id,
        version=6,
        fired=True,
        started=True,
        cancelled=True,
        session_id="s1",
        model="m2",
        fired_at=events[0].timestamp,
        steps=2,
        prompt_tokens=12,
        completion_tokens=5,
        queued=True,
    )
    assert state.is_open and not run.fold(state.run_id, []).is_open


def test_the_store_saves_atomically_and_reads_streams_from_a_version(tmp_path: Path) -> None:
    store = open_event_store(tmp_path / "a" / "b")  # creates its directory
    events = events_of_a_full_run()
    position = store.save(events)
    assert position == store.max_notification_id() == len(events)
    assert store.save([]) == 0
    run_id = events[0].originator_id
    assert [e.originator_version for e in store.stream(run_id)] == [1, 2, 3, 4, 5, 6]
    assert [e.originator_version for e in store.stream(run_id, after_version=4)] == [5, 6]
    assert [n.id for n in store.notifications(2, 3)] == [3, 4, 5]
    assert type(store.to_event(store.notifications(0, 1)[0])) is run.Fired
    assert store.streams_with("app.events.run:Started") == [run_id]
    assert store.streams_with("app.events.run:Finished") == []
    store.check_writable()
    store.close()


def test_check_writable_fails_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.save(events_of_a_full_run()[:1])
    holder = sqlite3.connect(tmp_path / "events.db")
    holder.execute("BEGIN IMMEDIATE")
    try:
        try:
            store.check_writable()
        except sqlite3.OperationalError:
            pass
        else:
            raise AssertionError("a locked store claimed to be writable")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.check_writable()
