"""Admission, queueing and release as one decision (issue 13 item 4), deterministically in-process.

The seam: an executor that runs an injected action right after the k-th command of a request's
admission path. Injecting the release of the session's active run (and, separately, a store that
starts failing) after every step, in turn, covers every interleaving of "admit B" with "release A"
and "the store fails", with a real SQLite store, writer and session service. The invariant: once
everything settles, no session is busy with a run nothing executes, and a queued run that was
answered 409 runs exactly once. And at every commit: a run the session service ran is never
released before its terminal event is saved (a saved release implies a saved `Finished`), and
one process never conflicts with itself on a run's stream (which would refuse the run's later
events, its `Finished` among them, and re-decide them in the background, after the release).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest

from app.agent import chat
from app.agent.lifecycle import RequestLifecycle, RouteDefaults
from app.agent.loop import Done
from app.agent.sessions import SessionService
from app.agent.turns import TurnOptions, TurnResult
from app.commands import AppendContent, AskPermission
from app.commands.execute import Executor
from app.commands.queue_run import QueueRun
from app.errors import BmoError, SessionBusy
from app.events.run import Finished, fold
from app.events.select import open_event_store
from app.events.session import RunReleased, session_uuid
from app.events.writer import EventWriter, PersistFailed
from app.providers.base import ChatMessage, Usage
from app.telemetry import Records
from tests.core.helpers import fire_cmd

SESSION = "s-race"
DEFAULTS = RouteDefaults(tool_policy="chat_only", ambiguity_action="ask", default_model="up/m")


class FakeTurns:
    """Stands in for the agent: records which histories it was asked to answer."""

    def __init__(self) -> None:
        self.histories: list[list[str]] = []
        self.during: Callable[[UUID], Awaitable[None]] | None = None  # runs inside each turn

    async def run(
        self,
        run_id: UUID,
        model: Any,
        messages: tuple[ChatMessage, ...],
        options: TurnOptions | None = None,
        result: TurnResult | None = None,
    ) -> AsyncIterator[Any]:
        self.histories.append([m.content for m in messages])
        if self.during is not None:
            await self.during(run_id)
        if result is not None:
            result.texts.append(f"answer to {messages[-1].content}")
        yield Done("stop", Usage(), "final_answer")


class SeamExecutor(Executor):
    """Runs `inject` once, right after the `after`-th command executed while `armed`."""

    def __init__(self, store: Any, writer: EventWriter) -> None:
        super().__init__(store, writer)
        self.armed = False
        self.after = 0
        self.count = 0
        self.inject: Callable[[], Awaitable[None]] | None = None
        self.lost: type | None = None  # commands of this type are never executed (a process gone)

    async def execute(self, cmd: Any, *, durable: bool = False) -> tuple:
        if self.lost is not None and isinstance(cmd, self.lost):
            return ()
        try:
            return await super().execute(cmd, durable=durable)
        finally:
            if self.armed:
                self.count += 1
                if self.count == self.after and self.inject is not None:
                    self.armed = False
                    inject, self.inject = self.inject, None
                    await inject()


class Harness:
    def __init__(self, tmp: Path, switch: Path) -> None:
        self.switch = switch
        self.store = open_event_store(tmp / "data", switch)
        self.records = Records(tmp / "log.jsonl")
        self.writer = EventWriter(self.store)
        self.executor = SeamExecutor(self.store, self.writer)
        self.turns = FakeTurns()
        self.not_run_here: set[str] = set()  # released without a terminal event: the test's own runs
        self.violations: list[str] = []
        self.conflicts: list[set[UUID]] = []
        told = self.writer.on_conflict  # the executor's: keep it, and note each conflict
        self.writer.on_conflict = lambda streams: (self.conflicts.append(streams), told(streams))[-1]
        self.writer.on_commit = self._check_terminal_first
        catalog = SimpleNamespace(resolve=lambda model: SimpleNamespace(id=model, model=model))
        self.sessions = SessionService(
            executor=self.executor,
            turns=self.turns,  # type: ignore[arg-type]
            catalog=catalog,  # type: ignore[arg-type]
            records=self.records,
            defaults=DEFAULTS,
            max_queue_depth=4,
        )

    def _check_terminal_first(self, _position: int) -> None:
        """On every commit: each released run of ours already has its `Finished` saved."""
        for event in self.store.stream(session_uuid(SESSION)):
            if not isinstance(event, RunReleased) or event.run_id in self.not_run_here:
                continue
            run = self.store.stream(UUID(hex=event.run_id))
            if not any(isinstance(e, Finished) for e in run):
                self.violations.append(f"{event.run_id} released with {[type(e).__name__ for e in run]}")

    async def lifecycle(self) -> RequestLifecycle:
        lifecycle = RequestLifecycle(
            request_id=uuid4().hex,
            route="chat_completions",
            session_id=SESSION,
            client_ua="test",
            defaults=DEFAULTS,
            executor=self.executor,
            records=self.records,
        )
        await lifecycle.fire(model="up/m", stream=False)
        return lifecycle

    async def admit(self, lifecycle: RequestLifecycle, text: str) -> str:
        """What the chat route does; returns 'active', 'queued:<run id>' or the error's code."""
        try:
            admission = await chat.admit(
                self.sessions,
                lifecycle,
                "up/m",
                (ChatMessage("user", text),),
                TurnOptions(stream=False),
            )
        except SessionBusy as busy:
            return f"queued:{busy.extra['run_id']}"
        except (BmoError, PersistFailed) as exc:
            return getattr(exc, "code", None) or type(exc).__name__
        return "active" if admission.active else "?"

    async def close(self) -> None:
        """Sessions (their background runs), then the writer, the store and the records."""
        await self.sessions.aclose()
        await self.writer.close()
        self.store.close()
        self.records.close()

    async def settled(self, timeout: float = 20.0) -> Any:
        """The session once it is free with nothing queued (polls the store; bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            state = await self.sessions.state(SESSION)
            if state.active_run is None and not state.queue:
                return state
            await asyncio.sleep(0.02)
        raise AssertionError(f"session stuck: active={state.active_run} queue={state.queue}")


async def _race(tmp: Path, after: int, *, fault: bool) -> None:
    switch = tmp / "faults-on"
    h = Harness(tmp, switch)
    h.writer.start()
    try:
        a = await h.lifecycle()
        h.not_run_here.add(a.request_id)  # released by the test itself, never finished
        assert await h.admit(a, "question A") == "active"

        async def release_a() -> None:
            await h.sessions.release(
                SESSION, a.request_id, "final_answer", [{"role": "user", "content": "A"}]
            )

        async def store_fails() -> None:
            switch.touch()

        b = await h.lifecycle()
        h.executor.inject = store_fails if fault else release_a
        h.executor.after, h.executor.count, h.executor.armed = after, 0, True
        outcome = await h.admit(b, "question B")
        h.executor.armed = False
        if fault:
            switch.unlink(missing_ok=True)
            await release_a()
        elif h.executor.inject is not None:  # the admission path had fewer steps than `after`
            h.executor.inject = None
            await release_a()
        await h.settled()
        ran = [hist for hist in h.turns.histories if hist[-1] == "question B"]
        if outcome.startswith("queued:"):
            queued = outcome.removeprefix("queued:")
            assert len(ran) == 1, (outcome, h.turns.histories)
            events = await asyncio.to_thread(h.store.stream, UUID(hex=queued))
            assert sum(isinstance(e, Finished) for e in events) == 1
            assert fold(UUID(hex=queued), events).outcome == "final_answer"
            assert [type(e).__name__ for e in events] == ["Fired", "Queued", "Finished"]
        elif outcome == "active":  # the release came first: B was admitted to run at once
            assert not ran
        else:  # refused (store failing): nothing of B may hold the session
            assert outcome in ("store_unavailable", "PersistFailed"), outcome
            assert not ran
        assert not h.violations, h.violations
        assert not h.conflicts, h.conflicts
    finally:
        switch.unlink(missing_ok=True)
        await h.close()


@pytest.mark.parametrize("after", range(1, 6))
def test_a_release_between_any_two_steps_of_admission_never_strands_the_queued_run(
    tmp_path: Path, after: int
) -> None:
    asyncio.run(_race(tmp_path, after, fault=False))


@pytest.mark.parametrize("after", range(1, 6))
def test_a_store_failure_between_any_two_steps_of_admission_never_strands_the_session(
    tmp_path: Path, after: int
) -> None:
    asyncio.run(_race(tmp_path, after, fault=True))


def test_a_failed_durable_save_leaves_no_unsaved_events_in_the_cache(tmp_path: Path) -> None:
    """Executor.execute must not keep events the store refused (suspected item of issue 13)."""

    async def scenario() -> None:
        switch = tmp_path / "faults-on"
        store = open_event_store(tmp_path / "data", switch)
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        run_id = uuid4()
        now = datetime.now(UTC)
        await executor.execute(
            fire_cmd(run_id),
            durable=True,
        )
        switch.touch()
        with pytest.raises(PersistFailed):
            await executor.execute(
                AskPermission(
                    run_id=run_id,
                    at=now,
                    question_id="q1",
                    tool="bash",
                    call_id="c",
                    arguments="{}",
                    expires_at=now.isoformat(),
                ),
                durable=True,
            )
        assert all(not s.open_questions for s in executor.live_runs())
        switch.unlink()
        await executor.execute(AppendContent(run_id=run_id, at=now, text="after"), durable=True)
        events = await asyncio.to_thread(store.stream, run_id)
        assert [e.originator_version for e in events] == [1, 2]  # contiguous: nothing unsaved counted
        assert not fold(run_id, events).open_questions
        await writer.close()
        store.close()

    asyncio.run(scenario())


def test_the_session_stream_holds_what_a_queued_run_needs(tmp_path: Path) -> None:
    """The queued run's turn is in the same event that queues it: one decision, one save."""

    async def scenario() -> None:
        switch = tmp_path / "faults-on"
        h = Harness(tmp_path, switch)
        h.writer.start()
        a = await h.lifecycle()
        assert await h.admit(a, "question A") == "active"
        b = await h.lifecycle()
        outcome = await h.admit(b, "question B")
        assert outcome.startswith("queued:")
        session_events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        queued = [e for e in session_events if type(e).__name__ == "RunQueued"]
        assert len(queued) == 1 and queued[0].messages == [{"role": "user", "content": "question B"}]
        await h.sessions.release(SESSION, a.request_id, "final_answer", [])
        await h.settled()
        await h.close()

    asyncio.run(scenario())


def test_a_deferred_run_another_writer_appended_to_is_released_only_after_its_finished(
    tmp_path: Path,
) -> None:
    """A run's `Finished` refused as stale (another writer appended to the run: an operator's
    answer, another instance) is re-decided before its session is released, not after."""

    async def scenario() -> None:
        h = Harness(tmp_path, tmp_path / "faults-on")
        h.writer.start()
        other_writer = EventWriter(h.store)
        other_writer.start()
        other = Executor(h.store, other_writer)

        async def another_writer_appends(run_id: UUID) -> None:
            await h.executor.current(run_id)  # this process holds the run's state
            await other.execute(
                AppendContent(run_id=run_id, at=datetime.now(UTC), text="from elsewhere"), durable=True
            )

        try:
            a = await h.lifecycle()
            h.not_run_here.add(a.request_id)
            assert await h.admit(a, "question A") == "active"
            outcome = await h.admit(await h.lifecycle(), "question B")
            assert outcome.startswith("queued:")
            h.turns.during = another_writer_appends
            await h.sessions.release(SESSION, a.request_id, "final_answer", [])
            await h.settled()
            events = await asyncio.to_thread(h.store.stream, UUID(hex=outcome.removeprefix("queued:")))
            assert not h.violations, h.violations
            names = [type(e).__name__ for e in events]
            assert names == ["Fired", "Queued", "ContentAppended", "Finished"], names
            assert fold(events[0].originator_id, events).outcome == "final_answer"
        finally:
            await other_writer.close()
            await h.close()

    asyncio.run(scenario())


def test_a_deferred_run_whose_stream_holds_only_fired_starts_without_a_conflict(tmp_path: Path) -> None:
    """The queueing process saved `Fired` and was gone before `Queued`; the process that starts
    the run holds no state of it. Re-opening the stream must not fire it a second time."""

    async def scenario() -> None:
        h = Harness(tmp_path, tmp_path / "faults-on")
        h.writer.start()
        try:
            a = await h.lifecycle()
            h.not_run_here.add(a.request_id)
            assert await h.admit(a, "question A") == "active"
            h.executor.lost = QueueRun
            outcome = await h.admit(await h.lifecycle(), "question B")
            h.executor.lost = None
            run_id = UUID(hex=outcome.removeprefix("queued:"))
            assert [type(e).__name__ for e in await asyncio.to_thread(h.store.stream, run_id)] == ["Fired"]
            h.executor.forget(run_id)  # another process (or this one, restarted) starts it
            await h.sessions.release(SESSION, a.request_id, "final_answer", [])
            await h.settled()
            await h.writer.flush(10)
            events = await asyncio.to_thread(h.store.stream, run_id)
            assert not h.conflicts, h.conflicts
            assert not h.violations, h.violations
            assert [type(e).__name__ for e in events] == ["Fired", "Queued", "Finished"]
        finally:
            await h.close()

    asyncio.run(scenario())


def test_a_refused_durable_save_keeps_the_runs_outboxed_events_for_the_next_command(
    tmp_path: Path,
) -> None:
    """A durable save the failing store refused drops that save only: the run's earlier events
    still in the outbox count for the next decision (not a reload of a store that lacks them)."""

    async def scenario() -> None:
        switch = tmp_path / "faults-on"
        store = open_event_store(tmp_path / "data", switch)
        writer = EventWriter(store, unavailable_wait_s=0.2, backoff_cap_s=0.2)
        conflicts: list[set[UUID]] = []
        executor = Executor(store, writer)
        told = writer.on_conflict
        writer.on_conflict = lambda streams: (conflicts.append(streams), told(streams))[-1]
        writer.start()
        run_id = uuid4()
        now = datetime.now(UTC)
        switch.touch()
        try:
            fire = fire_cmd(run_id)
            await executor.execute(fire)  # waits in the outbox
            with pytest.raises(PersistFailed):
                await executor.execute(AppendContent(run_id=run_id, at=now, text="refused"), durable=True)
            kept = await executor.execute(AppendContent(run_id=run_id, at=now, text="kept"))
            assert [e.originator_version for e in kept] == [2]  # decided after the outboxed Fired
            switch.unlink()
            assert await writer.flush(10)
            events = await asyncio.to_thread(store.stream, run_id)
            assert [(type(e).__name__, e.originator_version) for e in events] == [
                ("Fired", 1),
                ("ContentAppended", 2),
            ]
            assert events[1].text == "kept"
            assert not conflicts, conflicts
        finally:
            switch.unlink(missing_ok=True)
            await writer.close()
            store.close()

    asyncio.run(scenario())
