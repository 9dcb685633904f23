"""An embedded (SQLite) event store gets SQLite read models: the runner, follower, reader and reset.

`app/projections/select.py` is the one place that pairs an event store with its read
models; these drive each of its functions with a real SQLite store and check what they do.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from app.events.store import EventStore
from app.projections import runs
from app.projections.db import read_db_path
from app.projections.select import (
    projection_follower,
    projection_runner,
    read_connection,
    reset_read_models_of,
)
from tests.core.helpers import end, fire


def test_sqlite_read_models_follow_a_sqlite_store(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    path = read_db_path(tmp_path)
    ids = [fire(store) for _ in range(3)]
    for run_id in ids:
        end(store, run_id)
    runner = projection_runner(store, path, ledger_capacity=2, batch_size=2)
    assert runner.catch_up() == store.max_notification_id()
    conn = read_connection(store, path)
    assert [r["request_id"] for r in runs.list_runs(conn)[0]] == [ids[2].hex, ids[1].hex]  # capacity 2
    follower = projection_follower(store, path)
    assert follower.position == store.max_notification_id()
    asyncio.run(follower.stop())
    runner.close()
    conn.close()
    reset_read_models_of(store, path)
    conn = read_connection(store, path)
    assert runs.list_runs(conn)[0] == []
    rebuilt = projection_runner(store, path, ledger_capacity=10)
    assert rebuilt.position == 0  # rebuilt from the start
    rebuilt.catch_up()
    assert runs.run_count(conn) == 3
    rebuilt.close()
    conn.close()


def test_the_runner_options_reach_the_sqlite_runner(tmp_path: Path) -> None:
    """The crash seam passed through select: a step that dies before its tracking row applies nothing."""
    store = EventStore(tmp_path / "events.db")
    fire(store)

    def crash() -> None:
        raise RuntimeError("killed between rows and tracking")

    runner = projection_runner(
        store, read_db_path(tmp_path), ledger_capacity=10, between_rows_and_tracking=crash
    )
    with pytest.raises(RuntimeError, match="killed"):
        runner.catch_up()
    assert runs.run_count(runner.read_conn) == 0
    runner.close()


def test_the_running_projector_follows_appends_and_stops_cleanly(tmp_path: Path) -> None:
    """The background projector (what `bmo serve` runs): notified appends are projected and
    waited for, a step that fails is reported in last_error, and stop() ends it."""
    store = EventStore(tmp_path / "events.db")

    async def main() -> None:
        runner = projection_runner(store, read_db_path(tmp_path), ledger_capacity=10)
        reader = read_connection(store, read_db_path(tmp_path))  # its own connection: steps run meanwhile
        assert runner.last_error is None
        runner.start()
        first = fire(store)
        runner.notify(store.max_notification_id())
        assert await runner.wait_for(store.max_notification_id(), timeout=20)
        assert runs.get_run(reader, first.hex) is not None
        end(store, first)
        assert await runner.wait_for(store.max_notification_id(), timeout=20)  # woken by wait_for itself
        assert runs.get_run(reader, first.hex)["outcome"] == "final_answer"  # type: ignore[index]
        assert runner.last_error is None
        assert not await runner.wait_for(store.max_notification_id() + 5, timeout=0.05)
        await runner.stop()
        reader.close()

    asyncio.run(main())


def test_the_running_projector_polls_for_appends_nobody_announced(tmp_path: Path) -> None:
    """Another process appends (no notify reaches this one): the projector's poll finds it."""
    store = EventStore(tmp_path / "events.db")

    async def main() -> None:
        runner = projection_runner(store, read_db_path(tmp_path), ledger_capacity=10, poll_interval=0.05)
        runner.start()
        follower = projection_follower(store, read_db_path(tmp_path))
        fire(store)
        assert await follower.wait_for(store.max_notification_id(), timeout=20)  # its first step
        fire(store)  # after the first step, with no notify and no wait_for: only the poll finds it
        assert await follower.wait_for(store.max_notification_id(), timeout=20)
        await follower.stop()
        await runner.stop()

    asyncio.run(main())


def test_the_running_projector_stops_when_a_wake_up_comes_with_the_stop(tmp_path: Path) -> None:
    """stop() right after a notify (the writer committed as the server shuts down) ends the
    projector: on Python 3.11 `asyncio.wait_for` swallowed a cancel that arrived with the
    wake-up, and stop() then waited for ever (it hung the mutation run's stats phase)."""
    store = EventStore(tmp_path / "events.db")

    async def main() -> None:
        runner = projection_runner(store, read_db_path(tmp_path), ledger_capacity=10, poll_interval=3600)
        runner.start()
        fire(store)
        runner.notify()
        assert await runner.wait_for(store.max_notification_id(), timeout=20)
        woken = runner._woken()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not woken._waiters:  # type: ignore[attr-defined]  # idle: waiting to be woken
            assert loop.time() < deadline, "the projector never went idle"
            await asyncio.sleep(0.01)
        runner.notify()
        done, _ = await asyncio.wait({asyncio.ensure_future(runner.stop())}, timeout=20)
        assert done, "stop() never returned"

    asyncio.run(main())


def test_a_failing_step_is_reported_and_cleared_once_a_step_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The background projector keeps going after a failed step: the failure is in last_error and
    in a warning naming it, and the next step that succeeds clears it."""
    store = EventStore(tmp_path / "events.db")
    failures = [RuntimeError("killed between rows and tracking")]

    def crash_once() -> None:
        if failures:
            raise failures.pop()

    async def main() -> None:
        runner = projection_runner(
            store, read_db_path(tmp_path), ledger_capacity=10, between_rows_and_tracking=crash_once
        )
        runner.start()
        fire(store)
        runner.notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while runner.last_error is None:
            assert loop.time() < deadline, "the failed step was never reported"
            await asyncio.sleep(0.01)
        assert runner.last_error == "RuntimeError: killed between rows and tracking"
        assert await runner.wait_for(store.max_notification_id(), timeout=20)  # the retry succeeds
        while runner.last_error is not None:  # cleared once the steps run out of work
            assert loop.time() < deadline, "a successful step left the error reported"
            await asyncio.sleep(0.01)
        await runner.stop()

    with caplog.at_level("WARNING", logger="app.projections.stepping"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.name == "app.projections.stepping"] == [
        "projector step failed: RuntimeError: killed between rows and tracking"
    ]


def test_wait_for_waits_its_timeout_and_then_reports_what_was_reached(tmp_path: Path) -> None:
    """wait_for returns False at once for no time at all, waits out a short timeout (nothing wakes
    it: no projector runs), and at its timeout reports a position reached meanwhile by a step
    that did not wake it."""
    store = EventStore(tmp_path / "events.db")

    async def main() -> None:
        runner = projection_runner(store, read_db_path(tmp_path), ledger_capacity=10)
        fire(store)
        target = store.max_notification_id()
        assert not await runner.wait_for(target, timeout=0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await runner.wait_for(target, timeout=0.3)
        assert loop.time() - started >= 0.3
        waiting = asyncio.ensure_future(runner.wait_for(target, timeout=2))
        await asyncio.sleep(0)  # the waiter is waiting
        await asyncio.to_thread(runner.step)  # projects without waking it
        assert await waiting
        runner.close()

    asyncio.run(main())


def test_stop_ends_the_projector_task_and_lets_a_running_step_commit(tmp_path: Path) -> None:
    """The background projector is one task named `projector` (what a task dump shows); stop()
    ends it, and a step running in its thread at that moment commits before the database closes."""
    store = EventStore(tmp_path / "events.db")
    entered, go_on = threading.Event(), threading.Event()

    def slow_step() -> None:
        entered.set()
        go_on.wait(20)

    def projectors() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "projector" and not t.done()]

    async def main() -> None:
        runner = projection_runner(
            store, read_db_path(tmp_path), ledger_capacity=10, between_rows_and_tracking=slow_step
        )
        runner.start()
        assert len(projectors()) == 1
        first = fire(store)
        runner.notify()
        assert await asyncio.to_thread(entered.wait, 20)  # a step is between its rows and tracking
        stopping = asyncio.ensure_future(runner.stop())
        for _ in range(5):  # stop() cancels the task and waits for the step
            await asyncio.sleep(0)
        assert not stopping.done()
        go_on.set()
        await asyncio.wait_for(stopping, 20)
        assert projectors() == []
        reader = read_connection(store, read_db_path(tmp_path))
        assert runs.get_run(reader, first.hex) is not None  # the step committed
        reader.close()

    asyncio.run(main())
