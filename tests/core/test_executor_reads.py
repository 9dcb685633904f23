"""The executor's reads and its background path, through its public methods.

A run's state as another worker left it (`state_of`), a stream's events after a version
(`events`), and non-durable commands: saved exactly once each, never re-decided after a
save that went through.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from uuid import UUID, uuid4

from app.commands.append_content import AppendContent
from app.commands.execute import Executor
from app.commands.finish_run import FinishRun
from app.commands.queue_run import QueueRun
from app.events.run import ContentAppended
from app.events.store import EventStore
from app.events.writer import EventWriter
from tests.core.helpers import fire_cmd, now


def test_non_durable_commands_are_saved_exactly_once_each(tmp_path: Path) -> None:
    async def main() -> list[str]:
        store = EventStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        run_id = uuid4()
        await executor.execute(fire_cmd(run_id))
        for i in range(5):
            await executor.execute(AppendContent(run_id=run_id, at=now(), text=f"part {i} "))
        # a wrong re-decision runs as a background task that reads the store on a worker
        # thread: let several worker-thread round trips and flushes go by for it to show
        for _ in range(10):
            assert await writer.flush(10)
            await asyncio.to_thread(store.max_notification_id)
        events = await executor.events(run_id)
        await writer.close()
        store.close()
        assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
        return [e.text for e in events if isinstance(e, ContentAppended)]

    assert asyncio.run(main()) == [f"part {i} " for i in range(5)]


def test_state_of_reads_what_another_worker_appended(tmp_path: Path) -> None:
    async def main() -> None:
        store = EventStore(tmp_path / "events.db")
        writers = [EventWriter(store), EventWriter(store)]
        for w in writers:
            w.start()
        agent, operator = Executor(store, writers[0]), Executor(store, writers[1])
        run_id = uuid4()
        await agent.execute(fire_cmd(run_id), durable=True)
        assert (await agent.current(run_id)).version == 1
        await operator.execute(AppendContent(run_id=run_id, at=now(), text="other"), durable=True)
        assert (await agent.state_of(run_id)).version == 2
        # the agent's next command lands after the other worker's event, first time
        await agent.execute(AppendContent(run_id=run_id, at=now(), text="mine"), durable=True)
        after = await agent.events(run_id, after_version=1)
        assert [(e.originator_version, e.text) for e in after] == [(2, "other"), (3, "mine")]  # type: ignore[attr-defined]
        assert await agent.events(run_id, after_version=3) == []
        for w in writers:
            await w.close()
        store.close()

    asyncio.run(main())


def test_closed_elsewhere_names_the_conflicted_runs_another_writer_finished(tmp_path: Path) -> None:
    """A sweeper (another process) finishes run A and writes to run B behind the executor's back;
    the executor's next appends to both conflict. A is closed elsewhere, B is not, and a run that
    met no conflict is never read again."""
    from app.commands import append_content as append
    from app.commands import finish_run
    from app.commands.finish_run import FinishRun
    from app.events.run import fold

    async def main() -> tuple[bool, bool, bool, bool]:
        store = EventStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        a, b, calm = uuid4(), uuid4(), uuid4()
        for run_id in (a, b, calm):
            await executor.execute(fire_cmd(run_id), durable=True)
        sweep = FinishRun(run_id=a, at=now(), outcome="error_500", status_code=500, elapsed_ms=1.0)
        store.save(finish_run.decide(fold(a, store.stream(a)), sweep))
        other = AppendContent(run_id=b, at=now(), text="other")
        store.save(append.decide(fold(b, store.stream(b)), other))
        for run_id in (a, b, calm):  # a and b conflict, in that order
            await executor.execute(AppendContent(run_id=run_id, at=now(), text="mine"))
            assert await writer.flush(10)
        results = (
            await executor.closed_elsewhere(a),
            await executor.closed_elsewhere(b),
            await executor.closed_elsewhere(calm),
            await executor.closed_elsewhere(a),  # told once
        )
        await writer.close()
        store.close()
        return results

    assert asyncio.run(main()) == (True, False, False, False)


def test_a_session_admission_that_loses_a_race_in_the_writer_queues_behind_the_winner(tmp_path: Path) -> None:
    """Another process admits a run between this executor's read and its save (a store seam saves
    it first): the writer's conflict notice covers a stream the executor never caches, the
    admission is decided again and queues behind the winner."""
    from app.commands import admit_run
    from app.commands.admit_run import AdmitRun
    from app.events.session import SessionState, session_uuid
    from app.events.session import fold as session_fold

    stream_id = session_uuid("raced")
    fields = {
        "stream_id": stream_id,
        "session_id": "raced",
        "model": "m",
        "requester": "",
        "max_queue_depth": 4,
    }

    class RacingStore(EventStore):
        raced = False

        def save(self, events):  # type: ignore[no-untyped-def]
            if not self.raced and any(e.originator_id == stream_id for e in events):
                self.raced = True
                winner = AdmitRun(at=now(), run_id="winner", queued_run_id="w-q", **fields)
                super().save(admit_run.decide(SessionState(stream_id), winner))
            return super().save(events)

    async def main() -> SessionState:
        store = RacingStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        loser = AdmitRun(at=now(), run_id="loser", queued_run_id="l-q", **fields)
        await asyncio.wait_for(executor.execute(loser, durable=True), 20)
        await writer.close()
        state = session_fold(stream_id, store.stream(stream_id))
        store.close()
        return state

    state = asyncio.run(main())
    assert state.active_run == "winner" and state.queue == ("l-q",)


def test_a_durable_command_the_store_refused_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    """PersistFailed: the executor must not keep the refused events as if saved; the next command
    decides on what is stored (here: no open question, version 2 is free)."""
    import pytest

    from app.commands.ask_permission import AskPermission
    from app.events.faults import FaultInjectingStore
    from app.events.run import fold
    from app.events.writer import PersistFailed

    async def main() -> None:
        switch = tmp_path / "faults-on"
        store = FaultInjectingStore(tmp_path / "events.db", switch)
        writer = EventWriter(store, unavailable_wait_s=0.1)
        writer.start()
        executor = Executor(store, writer)
        run_id = uuid4()
        await executor.execute(fire_cmd(run_id), durable=True)
        switch.touch()
        ask = AskPermission(
            run_id=run_id, at=now(), question_id="q1", tool="bash", call_id="c", arguments="{}", expires_at=""
        )
        with pytest.raises(PersistFailed):
            await executor.execute(ask, durable=True)
        assert not (await executor.current(run_id)).open_questions
        switch.unlink()
        await executor.execute(AppendContent(run_id=run_id, at=now(), text="after"), durable=True)
        events = await executor.events(run_id)
        assert [e.originator_version for e in events] == [1, 2]
        assert not fold(run_id, events).open_questions
        await writer.close()
        store.close()

    asyncio.run(main())


def test_a_command_that_decides_nothing_returns_the_stored_state(tmp_path: Path) -> None:
    """A session command that changes nothing on the state this executor last knew is decided again
    on the stored state (it may have moved on meanwhile) and, still nothing, returns that state;
    a non-durable command returns the state after its events, as a durable one does."""
    from app.commands.admit_run import AdmitRun
    from app.commands.drop_queued_run import DropQueuedRun
    from app.events.session import session_uuid

    async def main() -> None:
        store = EventStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        stream_id = session_uuid("known")
        admit = AdmitRun(
            stream_id=stream_id,
            at=now(),
            session_id="known",
            run_id="a",
            queued_run_id="a-q",
            model="m",
            requester="",
            max_queue_depth=4,
        )
        admitted = await executor.execute(admit, durable=True)  # the executor now knows the session
        assert admitted.state.active_run == "a"
        nothing = await executor.execute(DropQueuedRun(stream_id=stream_id, at=now(), run_id="b", reason="r"))
        assert nothing == () and nothing.state.active_run == "a"
        assert nothing.state.version == admitted.state.version
        run_id = uuid4()
        await executor.execute(fire_cmd(run_id), durable=True)
        appended = await executor.execute(AppendContent(run_id=run_id, at=now(), text="x"))
        assert appended.state.version == 2
        await writer.close()
        store.close()

    asyncio.run(main())


class _HeldStore(EventStore):
    """The real store; while `held`, a save waits for `released` (a commit still in flight)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.held = False
        self.released = threading.Event()

    def save(self, events):  # type: ignore[no-untyped-def]
        if self.held:
            self.released.wait(10)
        return super().save(events)


def test_a_run_that_ended_is_decided_on_its_unsaved_events_until_they_are_saved(tmp_path: Path) -> None:
    """A command on a run that just ended, decided while its last events still wait to be
    saved (another path of the same process, e.g. the admission that queued a deferred run
    which has already run), sees those events: it decides nothing, and the process never
    conflicts with its own writes."""

    async def main() -> None:
        store = _HeldStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        conflicts: list[set[UUID]] = []
        executor = Executor(store, writer)
        told = writer.on_conflict
        writer.on_conflict = lambda streams: (conflicts.append(streams), told(streams))[-1]
        run_id = uuid4()
        queue = QueueRun(
            run_id=run_id, at=now(), session_id="s", position=1, by_request="r", messages=[], options={}
        )
        await executor.execute(fire_cmd(run_id, session_id="s"), durable=True)  # saved
        store.held = True  # what follows waits unsaved
        await executor.execute(queue)
        finish = FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1.0)
        await executor.execute(finish)
        waiting = writer._held
        late = asyncio.ensure_future(executor.execute(queue, durable=True))  # the other path, late
        for _ in range(10_000):  # until it decided: nothing (done) or something (submitted)
            if late.done() or writer._held > waiting:
                break
            await asyncio.sleep(0.001)
        store.released.set()
        assert await asyncio.wait_for(late, 10) == ()  # nothing left to decide
        assert await writer.flush(10)
        names = [type(e).__name__ for e in await executor.events(run_id)]
        await writer.close()
        store.close()
        assert names == ["Fired", "Queued", "Finished"]
        assert conflicts == []

    asyncio.run(main())
