"""The real SQLite event store, the group-commit writer and the pull projector."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from app.commands import FinishRun, FireRun, StartRun
from app.commands.execute import Executor
from app.events.lease import OwnLease
from app.events.run import Finished, Fired, RunState
from app.events.select import open_event_store
from app.events.store import EventStore
from app.events.writer import EventWriter
from app.projections import counts, runs
from app.projections.db import open_read_db, read_db_path, reset_read_models
from app.projections.runner import ProjectionRunner


def now() -> datetime:
    return datetime.now(UTC)


def fire_cmd(run_id, route="chat_completions", ua="ua"):  # type: ignore[no-untyped-def]
    return FireRun(
        run_id=run_id,
        at=now(),
        session_id="",
        route=route,
        model="bmo/local",
        stream=False,
        tool_policy="chat_only",
        ambiguity_action="ask",
        is_session_reuse=False,
        client_ua=ua,
    )


async def run_requests(store: EventStore, n: int, writer: EventWriter | None = None) -> list[str]:
    writer = writer or EventWriter(store)
    writer.start()
    executor = Executor(store, writer)
    ids = []
    for i in range(n):
        run_id = uuid4()
        ids.append(run_id.hex)
        await executor.execute(fire_cmd(run_id, ua=f"ua-{i % 2}"))
        await executor.execute(StartRun(run_id=run_id, at=now(), model="bmo/local", message_count=1))
        await executor.execute(
            FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1.0)
        )
    assert await writer.flush(5)
    await writer.close()
    return ids


def test_group_commit_saves_every_event_in_order(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    ids = asyncio.run(run_requests(store, 20))
    assert store.max_notification_id() == 60
    for request_id in ids:
        events = store.stream(uuid4().__class__(hex=request_id))
        assert [type(e).__name__ for e in events] == ["Fired", "Started", "Finished"]
        assert [e.originator_version for e in events] == [1, 2, 3]


class FlakyStore(EventStore):
    """A test seam: the real store, failing on demand like a full disk."""

    failing = False

    def save(self, events):  # type: ignore[no-untyped-def]
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        return super().save(events)


def test_failed_appends_wait_in_the_outbox_and_flush_on_recovery(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db")
    failures: list[str] = []

    async def scenario() -> None:
        writer = EventWriter(store, on_failure=lambda events, error: failures.append(error))
        writer.start()
        executor = Executor(store, writer)
        store.failing = True
        run_id = uuid4()
        await executor.execute(fire_cmd(run_id))  # never raises: the request is still served
        await asyncio.sleep(0.3)
        assert writer.state.degraded and "disk is full" in (writer.state.last_error or "")
        assert store.max_notification_id() == 0
        store.failing = False
        await executor.execute(
            FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1)
        )
        assert await writer.flush(5)
        assert not writer.state.degraded
        assert writer.state.flushed_after_failure == 2
        await writer.close()
        assert [type(e) for e in store.stream(run_id)] == [Fired, Finished]

    asyncio.run(scenario())
    assert len(failures) == 1


def test_outbox_is_bounded_and_counts_what_overflowed(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db")
    store.failing = True

    async def scenario() -> None:
        writer = EventWriter(store, outbox_limit=3)
        writer.start()
        for _ in range(5):
            writer.submit(list(fire_run_events()))
        await asyncio.sleep(0.1)
        assert writer.state.overflowed_events == 2
        store.failing = False
        assert await writer.flush(5)
        await writer.close()

    asyncio.run(scenario())
    assert store.max_notification_id() == 3


def fire_run_events():  # type: ignore[no-untyped-def]
    from app.commands import fire_run

    run_id = uuid4()
    return fire_run.decide(RunState(run_id), fire_cmd(run_id))


def test_projector_builds_the_ledger_and_tracks_its_position(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    ids = asyncio.run(run_requests(store, 5))
    runner = ProjectionRunner(store, read_db_path(tmp_path), ledger_capacity=100)
    assert runner.catch_up() == 15
    conn = open_read_db(read_db_path(tmp_path)).conn
    rows, cursor = runs.list_runs(conn, limit=10)
    assert [r["request_id"] for r in rows] == list(reversed(ids)) and cursor is None
    assert all(r["outcome"] == "final_answer" for r in rows)
    assert counts.route_counts(conn) == {"chat_completions": 5}
    assert counts.top_user_agents(conn) == [
        {"user_agent": "ua-0", "count": 3},
        {"user_agent": "ua-1", "count": 2},
    ]
    # a second runner on the same files finds nothing left to do: no double counting
    again = ProjectionRunner(store, read_db_path(tmp_path), ledger_capacity=100)
    assert again.catch_up() == 15
    assert counts.route_counts(conn) == {"chat_completions": 5}


def test_rebuild_by_replay_equals_the_live_read_models(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    asyncio.run(run_requests(store, 7))
    path = read_db_path(tmp_path)
    ProjectionRunner(store, path, ledger_capacity=100).catch_up()

    def dump() -> dict[str, list[tuple]]:
        conn = open_read_db(path).conn
        return {
            t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2")]
            for t in (
                "openai_compat_runs",
                "openai_compat_run_events",
                "openai_compat_route_counts",
                "openai_compat_user_agents",
                "projection_tracking",
            )
        }

    live = dump()
    reset_read_models(path)
    assert dump()["openai_compat_runs"] == []
    ProjectionRunner(store, path, ledger_capacity=100).catch_up()
    assert dump() == live


@pytest.mark.parametrize("new_requests", [0, 1, 2])
def test_read_models_ahead_of_a_store_that_lost_commits_are_rebuilt_from_it(
    tmp_path: Path, new_requests: int
) -> None:
    """A power loss under synchronous=NORMAL (or a store restored from an older copy) can
    take commits the projector already read: the lost run must not stay in the ledger, and
    new events that reuse the lost ids (before or after the projector restarts) must not
    be skipped."""
    store = open_event_store(tmp_path)
    ids = asyncio.run(run_requests(store, 5))
    path = read_db_path(tmp_path)
    ProjectionRunner(store, path, ledger_capacity=100).catch_up()
    with sqlite3.connect(store.path) as conn:  # the last request's three commits are gone
        conn.execute("DELETE FROM stored_events WHERE rowid > 12")
    later = asyncio.run(run_requests(store, new_requests)) if new_requests else []
    assert store.max_notification_id() == 12 + 3 * new_requests

    ProjectionRunner(store, path, ledger_capacity=100).catch_up()

    conn = open_read_db(path).conn
    rows, _ = runs.list_runs(conn, limit=50)
    assert {r["request_id"] for r in rows} == set(ids[:4] + later)
    assert all(r["outcome"] == "final_answer" for r in rows)
    assert counts.route_counts(conn) == {"chat_completions": 4 + new_requests}
    for request_id in later:
        assert [e["type"] for e in runs.run_events(conn, request_id)] == ["Fired", "Started", "Finished"]


def test_ledger_capacity_prunes_the_oldest_runs(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    ids = asyncio.run(run_requests(store, 6))
    path = read_db_path(tmp_path)
    ProjectionRunner(store, path, ledger_capacity=4, batch_size=2).catch_up()
    conn = open_read_db(path).conn
    rows, _ = runs.list_runs(conn, limit=50)
    assert [r["request_id"] for r in rows] == list(reversed(ids[-4:]))
    assert runs.run_events(conn, ids[0]) == []
    assert len(store.stream(uuid4().__class__(hex=ids[0]))) == 3  # events stay in the store


@pytest.mark.parametrize("durable", [True, False])
def test_execute_ignores_commands_for_finished_runs(tmp_path: Path, durable: bool) -> None:
    store = open_event_store(tmp_path)

    async def scenario() -> None:
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        run_id = uuid4()
        await executor.execute(fire_cmd(run_id), durable=durable)
        await executor.execute(
            FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1),
            durable=True,
        )
        # not live any more: the executor loads the stream from the store and decides nothing
        late = await executor.execute(
            FinishRun(run_id=run_id, at=now(), outcome="error_500", status_code=500, elapsed_ms=1),
            durable=True,
        )
        assert late == ()
        await writer.close()

    asyncio.run(scenario())


def test_every_store_connection_commits_without_an_fsync_each(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL on every connection the store commits through,
    including the one the Application opened to create its table before the store
    could set it (the one a lone writer thread keeps reusing): FULL is an fsync per
    commit, ~8x the cost of a commit."""
    store = EventStore(tmp_path / "events.db")
    try:
        pool = store._app.recorder.datastore.pool  # type: ignore[attr-defined]
        held = [pool.get_connection() for _ in range(3)]  # the pooled one first, then new ones
        try:
            modes = [c._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0] for c in held]
            journal = held[0]._sqlite_conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            for connection in held:
                pool.put_connection(connection)
        assert journal == "wal"
        assert modes == [1, 1, 1]  # 1 = NORMAL (2 = FULL)
    finally:
        store.close()


class SlowStore(EventStore):
    """The real store, whose saves wait until released (a slow or failing server)."""

    url = "postgresql://shared"  # as a shared store: other instances could close its runs
    failing = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def save(self, events):  # type: ignore[no-untyped-def]
        if self.failing:
            raise sqlite3.OperationalError("connection refused")
        self.release.wait(30)
        return super().save(events)


async def _fired_run(executor: Executor) -> UUID:
    run_id = uuid4()
    await executor.execute(fire_cmd(run_id))
    await executor.execute(StartRun(run_id=run_id, at=now(), model="bmo/local", message_count=1))
    return run_id


def test_an_answer_waits_for_its_last_append_only_when_its_run_may_have_been_swept(tmp_path: Path) -> None:
    """No store round trip per answer while this instance's lease is surely held; after a
    lapse, the last append is waited for (a refusal would show a sweep) unless the store is
    failing, when waiting would only stall the answer."""
    store = SlowStore(tmp_path / "events.db")
    clock = [100.0]

    async def scenario() -> None:
        writer = EventWriter(store, unavailable_wait_s=30)
        writer.start()
        executor = Executor(store, writer)
        lease = OwnLease(4.0, clock=lambda: clock[0])
        executor.own_lease = lease
        lease.renewed(lease.asked())

        held = await _fired_run(executor)  # lease held, same epoch: answered at once
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await executor.closed_elsewhere(held)
        assert loop.time() - started < 1.0 and store.max_notification_id() == 0  # nothing saved yet

        suspect = await _fired_run(executor)
        clock[0] += 30.0  # paused past the lease, then renewed: a new epoch
        lease.renewed(lease.asked())
        waiting = asyncio.ensure_future(executor.closed_elsewhere(suspect))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # it waits for the append to land
        store.release.set()
        assert not await asyncio.wait_for(waiting, 10)
        assert [type(e) for e in store.stream(suspect)][:1] == [Fired]

        store.failing = True  # the server is away, and the lease lapses
        away = await _fired_run(executor)
        clock[0] += 30.0
        started = loop.time()
        assert not await executor.closed_elsewhere(away)
        assert loop.time() - started < 5.0  # the failure ended the wait, not the 30 s bound
        store.failing = False
        assert await writer.flush(10)
        await writer.close()

    asyncio.run(scenario())
