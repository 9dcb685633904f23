"""The executor's reads and its background path, through its public methods.

A run's state as another worker left it (`state_of`), a stream's events after a version
(`events`), and non-durable commands: saved exactly once each, never re-decided after a
save that went through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import uuid4

from app.commands.append_content import AppendContent
from app.commands.execute import Executor
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
