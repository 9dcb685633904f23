"""The permission gate in-process: ask, an answer from another process, timeout, run end.

Two executors on one SQLite store stand for the worker running the agent and
the worker an operator's `POST /v1/permissions/{id}` reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from app.agent.approval import canonical_arguments
from app.agent.permissions import Decision, PermissionGate, answer
from app.commands.execute import Executor
from app.commands.finish_run import FinishRun
from app.events.run import PermissionAsked, PermissionDecided, fold
from app.events.store import EventStore
from app.events.writer import EventWriter
from app.providers.base import ToolCall
from tests.core.helpers import fire_cmd, now

CALL = ToolCall(id="call_1", name="write_file", arguments='{"path": "a.txt", "content": "x"}')


async def two_workers(tmp_path: Path, body: Callable[..., Awaitable[Any]]) -> Any:
    store = EventStore(tmp_path / "events.db")
    writers = [EventWriter(store), EventWriter(store)]
    for w in writers:
        w.start()
    agent, operator = Executor(store, writers[0]), Executor(store, writers[1])
    run_id = uuid4()
    await agent.execute(fire_cmd(run_id), durable=True)
    try:
        return await body(store, agent, operator, run_id)
    finally:
        for w in writers:
            await w.close()


async def ask(gate: PermissionGate, run_id: UUID, call: ToolCall) -> Decision:
    """The gate's two steps: record the question (or answer at once), then wait for its answer."""
    opened = await gate.open(run_id, call)
    return opened if isinstance(opened, Decision) else await gate.wait(run_id, opened)


async def question_of(store: EventStore, run_id: UUID) -> PermissionAsked:
    for _ in range(500):
        asked = [e for e in await asyncio.to_thread(store.stream, run_id) if isinstance(e, PermissionAsked)]
        if asked:
            return asked[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no question was asked")


def test_an_operator_answer_from_another_worker_reaches_the_waiting_run(tmp_path: Path) -> None:
    async def body(store: EventStore, agent: Executor, operator: Executor, run_id: UUID) -> tuple:
        gate = PermissionGate(agent, timeout_s=30, poll_s=0.01)
        waiting = asyncio.create_task(ask(gate, run_id, CALL))
        asked = await question_of(store, run_id)
        assert (asked.tool, asked.call_id) == ("write_file", "call_1")
        assert asked.arguments == canonical_arguments(CALL.arguments)  # what runs, canonical
        first = await answer(operator, run_id, asked.question_id, "allow", requester="alice")
        second = await answer(operator, run_id, asked.question_id, "deny")
        decision = await asyncio.wait_for(waiting, 10)
        # the agent's cache was refreshed: its next command lands after the operator's event
        finish = FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1)
        await agent.execute(finish, durable=True)
        late = await answer(operator, run_id, asked.question_id, "deny")
        return asked, decision, first, second, late, store.stream(run_id)

    asked, decision, first, second, late, stream = asyncio.run(two_workers(tmp_path, body))
    assert (decision.question_id, decision.allowed, decision.decided_by) == (
        asked.question_id,
        True,
        "operator",
    )
    assert (first, second, late) == ("decided", "already_decided", "already_decided")
    decided = [e for e in stream if isinstance(e, PermissionDecided)]
    assert [(e.decision, e.decided_by, e.requester) for e in decided] == [("allow", "operator", "alice")]
    assert [e.originator_version for e in stream] == list(range(1, len(stream) + 1))


def test_an_unanswered_question_is_denied_at_its_timeout(tmp_path: Path) -> None:
    async def body(store: EventStore, agent: Executor, operator: Executor, run_id: UUID) -> tuple:
        gate = PermissionGate(agent, timeout_s=0.3, poll_s=0.05)
        decision = await asyncio.wait_for(ask(gate, run_id, CALL), 10)
        return decision, store.stream(run_id)

    decision, stream = asyncio.run(two_workers(tmp_path, body))
    assert not decision.allowed and decision.decided_by == "timeout"
    decided = [e for e in stream if isinstance(e, PermissionDecided)]
    assert [(e.question_id, e.decision, e.decided_by) for e in decided] == [
        (decision.question_id, "deny", "timeout")
    ]
    assert not fold(stream[0].originator_id, stream).open_questions


def test_a_question_on_an_ended_run_is_refused_and_an_answer_to_it_is_run_ended(tmp_path: Path) -> None:
    async def body(store: EventStore, agent: Executor, operator: Executor, run_id: UUID) -> tuple:
        finish = FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1)
        await agent.execute(finish, durable=True)
        gate = PermissionGate(agent, timeout_s=30, poll_s=0.01)
        decision = await asyncio.wait_for(ask(gate, run_id, CALL), 10)
        unknown = await answer(operator, run_id, "nope", "allow")
        return decision, unknown

    decision, unknown = asyncio.run(two_workers(tmp_path, body))
    assert not decision.allowed and decision.decided_by == "run_ended"
    assert unknown == "run_ended"
