"""The store-level contract on both event stores: embedded SQLite and PostgreSQL.

Each test runs once per store (`both_stores`): the same events, the same
read models, the same one-run-per-session decision when two instances race.
"""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from app.commands import admit_run
from app.commands.admit_run import AdmitRun
from app.commands.execute import Executor
from app.events.select import open_event_store
from app.events.session import RunActivated, RunQueued, session_uuid
from app.events.session import fold as session_fold
from app.events.store import EventStore
from app.events.writer import EventWriter
from app.projections import counts, runs
from app.projections.db import read_db_path
from app.projections.select import projection_runner, read_connection, reset_read_models_of
from app.recovery import sweep_interrupted
from app.telemetry import Records
from tests.integration.test_store_and_projector import fire_cmd, run_requests

pytestmark = pytest.mark.both_stores

TABLES = (
    "openai_compat_runs",
    "openai_compat_run_events",
    "openai_compat_route_counts",
    "openai_compat_user_agents",
    "projection_tracking",
)


@pytest.fixture
def open_store(tmp_path: Path, store_url: str):  # type: ignore[no-untyped-def]
    """Opens the store as one more instance would (its own pool, its own listener)."""
    opened: list[EventStore] = []

    def open_one() -> EventStore:
        store = open_event_store(tmp_path, url=store_url)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def runner(store: EventStore, tmp_path: Path, **options: object):  # type: ignore[no-untyped-def]
    return projection_runner(store, read_db_path(tmp_path), ledger_capacity=100, **options)


def dump(conn) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    return {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in TABLES}


def test_events_are_saved_in_order_and_projected_once_by_two_projectors(open_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = open_store()
    ids = asyncio.run(run_requests(store, 6))
    assert store.max_notification_id() == 18
    for request_id in ids:
        events = store.stream(UUID(hex=request_id))
        assert [type(e).__name__ for e in events] == ["Fired", "Started", "Finished"]
    first, second = runner(store, tmp_path), runner(open_store(), tmp_path)  # two instances
    threads = [threading.Thread(target=r.catch_up) for r in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    conn = read_connection(store, read_db_path(tmp_path))
    rows, _ = runs.list_runs(conn, limit=10)
    assert [r["request_id"] for r in rows] == list(reversed(ids))
    assert all(r["outcome"] == "final_answer" and r["stream"] is False for r in rows)
    assert counts.route_counts(conn) == {"chat_completions": 6}  # not 12: each event applied once
    assert counts.top_user_agents(conn) == [
        {"user_agent": "ua-0", "count": 3},
        {"user_agent": "ua-1", "count": 3},
    ]
    assert [e["type"] for e in runs.run_events(conn, ids[0])] == ["Fired", "Started", "Finished"]
    assert first.position == 18 or second.position == 18
    first.close()
    second.close()


def test_rebuild_by_replay_equals_the_live_read_models(open_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = open_store()
    asyncio.run(run_requests(store, 5))
    runner(store, tmp_path).catch_up()
    live = dump(read_connection(store, read_db_path(tmp_path)))
    assert len(live["openai_compat_runs"]) == 5
    reset_read_models_of(store, read_db_path(tmp_path))
    runner(store, tmp_path, batch_size=2).catch_up()
    assert dump(read_connection(store, read_db_path(tmp_path))) == live


def test_instances_racing_for_one_session_admit_exactly_one_and_queue_the_rest_in_order(open_store) -> None:  # type: ignore[no-untyped-def]
    """Three instances (three stores, three writers) admit 9 runs to one session at once."""
    stores = [open_store() for _ in range(3)]
    stream_id = session_uuid("race")

    async def admit_all() -> list[tuple]:
        executors = []
        for store in stores:
            writer = EventWriter(store)
            writer.start()
            executors.append((Executor(store, writer), writer))

        async def admit(i: int) -> tuple:
            executor, _ = executors[i % 3]
            command = AdmitRun(
                stream_id=stream_id,
                at=datetime.now(UTC),
                session_id="race",
                run_id=f"run-{i}",
                queued_run_id=f"queued-{i}",
                model="bmo/local",
                requester="",
                max_queue_depth=20,
            )
            return await executor.execute(command, durable=True)

        results = await asyncio.gather(*(admit(i) for i in range(9)))
        for _, writer in executors:
            await writer.close()
        return results

    results = asyncio.run(admit_all())
    activated = [e for events in results for e in events if isinstance(e, RunActivated)]
    queued = [e for events in results for e in events if isinstance(e, RunQueued)]
    assert len(activated) == 1 and len(queued) == 8
    state = session_fold(stream_id, stores[1].stream(stream_id))
    assert state.active_run == activated[0].run_id
    assert list(state.queue) == [e.run_id for e in sorted(queued, key=lambda e: e.position)]
    assert sorted(e.position for e in queued) == list(range(1, 9))


def test_recovery_finishes_open_runs_once_and_frees_their_sessions(open_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from app.commands import fire_run
    from app.events.run import RunState

    store = open_store()
    open_id = uuid4()
    fire = fire_cmd(open_id)
    store.save(fire_run.decide(RunState(open_id), fire))
    stream_id = session_uuid("s-rec")
    state = session_fold(stream_id, store.stream(stream_id))
    admit = AdmitRun(
        stream_id=stream_id,
        at=datetime.now(UTC),
        session_id="s-rec",
        run_id=open_id.hex,
        queued_run_id="unused",
        model="bmo/local",
        requester="",
        max_queue_depth=4,
    )
    store.save(admit_run.decide(state, admit))
    asyncio.run(run_requests(store, 2))  # finished runs: never touched
    records = Records(tmp_path / "log.jsonl", stderr=io.StringIO())
    assert sweep_interrupted(store, read_db_path(tmp_path), records, capacity=100) == [open_id.hex]
    assert sweep_interrupted(store, read_db_path(tmp_path), records, capacity=100) == []
    records.close()
    conn = read_connection(store, read_db_path(tmp_path))
    row = runs.get_run(conn, open_id.hex)
    assert row is not None and (row["outcome"], row["error"]) == ("error_500", "interrupted")
    finished = [e for e in store.stream(open_id) if type(e).__name__ == "Finished"]
    assert len(finished) == 1
    assert session_fold(stream_id, store.stream(stream_id)).active_run is None


def test_an_insert_by_one_instance_wakes_the_others_listener(postgres_url: str, tmp_path: Path) -> None:
    """Cross-instance wake-up is PostgreSQL's NOTIFY, delivered on commit, not a poll."""
    from app.events.system import persistence_recovered

    writer_side = open_event_store(tmp_path, url=postgres_url)
    reader_side = open_event_store(tmp_path, url=postgres_url)
    heard: list[tuple[str, str]] = []
    woke = threading.Event()
    connected = threading.Event()

    def on_notify(channel: str, payload: str) -> None:
        if channel:
            heard.append((channel, payload))
            woke.set()
        else:
            connected.set()  # (re)connected: listening from now on

    reader_side.listen(("bmo_events",), on_notify)
    try:
        assert connected.wait(10)
        assert not woke.is_set()
        writer_side.save([persistence_recovered(0, 0, 0, "")])
        assert woke.wait(10)
        assert heard[0][0] == "bmo_events"
    finally:
        writer_side.close()
        reader_side.close()


def test_appends_decided_on_a_state_another_writer_overtook_are_all_refused(open_store) -> None:  # type: ignore[no-untyped-def]
    """A run's own writer keeps going while another instance closed the run: nothing lands after."""
    from app.commands import AppendContent, FinishRun, StartRun, finish_run
    from app.events.run import fold

    own, other = open_store(), open_store()
    run_id = uuid4()

    async def scenario() -> None:
        writer = EventWriter(own)
        writer.start()
        executor = Executor(own, writer)
        await executor.execute(fire_cmd(run_id), durable=True)
        await executor.execute(StartRun(run_id=run_id, at=datetime.now(UTC), model="m", message_count=1))
        assert await writer.flush(5)
        # another instance closes the run (a sweeper); our executor's cached state does not know
        state = fold(run_id, other.stream(run_id))
        swept = FinishRun(
            run_id=run_id, at=datetime.now(UTC), outcome="error_500", status_code=500, elapsed_ms=0
        )
        other.save(finish_run.decide(state, swept))
        for i in range(5):  # decided back to back on the stale cached state
            await executor.execute(AppendContent(run_id=run_id, at=datetime.now(UTC), text=f"late {i}"))
        await executor.execute(
            FinishRun(
                run_id=run_id, at=datetime.now(UTC), outcome="final_answer", status_code=200, elapsed_ms=1
            )
        )
        assert await writer.flush(5)
        await writer.close()

    asyncio.run(scenario())
    types = [type(e).__name__ for e in own.stream(run_id)]
    assert types == ["Fired", "Started", "Finished"], types
