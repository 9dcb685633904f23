"""What a permission answer grants, and what the waiting run is told.

In-process, two executors on one SQLite store (the agent's worker and the operator's),
as in tests/core/test_permission_gate.py: an allow for the session reaches later calls of
the same tool in that session (or that run, without a session) and nothing else; a deny,
an allow-once and a stale digest are each told apart; the decision carries the exact call.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from app.agent.approval import arguments_digest, canonical_arguments
from app.agent.permissions import Decision, PermissionGate, Question, answer
from app.commands.append_content import AppendContent
from app.commands.execute import Executor
from app.commands.finish_run import FinishRun
from app.events.run import PermissionAsked, PermissionDecided, fold
from app.events.store import EventStore
from app.events.writer import EventWriter
from app.providers.base import ToolCall
from tests.core.helpers import fire_cmd

CALL = ToolCall(id="call_1", name="write_file", arguments='{"content": "x", "path": "a.txt"}')
OTHER_TOOL = ToolCall(id="call_2", name="bash", arguments='{"command": "ls"}')


class World:
    def __init__(self, tmp: Path) -> None:
        self.store = EventStore(tmp / "events.db")
        self.writers = [EventWriter(self.store), EventWriter(self.store)]
        self.agent = Executor(self.store, self.writers[0])
        self.operator = Executor(self.store, self.writers[1])
        self.gate = PermissionGate(self.agent, timeout_s=30, poll_s=0.01)

    async def run(self, session: str = "") -> UUID:
        run_id = uuid4()
        await self.agent.execute(fire_cmd(run_id, session), durable=True)
        return run_id

    async def asked(self, run_id: UUID) -> int:
        events = await asyncio.to_thread(self.store.stream, run_id)
        return sum(isinstance(e, PermissionAsked) for e in events)

    async def decisions(self, run_id: UUID) -> list[PermissionDecided]:
        events = await asyncio.to_thread(self.store.stream, run_id)
        return [e for e in events if isinstance(e, PermissionDecided)]

    async def decide(self, run_id: UUID, call: ToolCall, reply: str, **kw: Any) -> tuple[Decision, str]:
        """The gate asks; the operator answers `reply`; the run's decision and the answer's result."""
        opened = await self.gate.open(run_id, call)
        assert isinstance(opened, Question), opened
        result = await answer(self.operator, run_id, opened.asked.question_id, reply, **kw)
        return await asyncio.wait_for(self.gate.wait(run_id, opened), 10), result


def play(tmp: Path, body: Any) -> None:
    async def main() -> None:
        w = World(tmp)
        for writer in w.writers:
            writer.start()
        try:
            await asyncio.wait_for(body(w), 60)
        finally:
            for writer in w.writers:
                await writer.close()
            w.store.close()

    asyncio.run(main())


def test_an_allow_carries_the_exact_call_digest_requester_and_channel(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        decision, result = await w.decide(run_id, CALL, "allow", requester="alice", via="tui")
        canonical = canonical_arguments(CALL.arguments)
        assert result == "decided"
        assert decision.allowed and decision.decided_by == "operator"
        assert decision.call == ToolCall(CALL.id, CALL.name, canonical)
        assert decision.digest == arguments_digest(CALL.name, canonical)
        assert (decision.decided_via, decision.requester, decision.scope) == ("tui", "alice", "once")

    play(tmp_path, body)


def test_a_deny_is_a_deny_with_its_channel(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        decision, result = await w.decide(run_id, CALL, "deny", requester="bob")
        assert result == "decided" and not decision.allowed
        assert (decision.decided_by, decision.decided_via, decision.requester) == ("operator", "http", "bob")
        decided = [
            e for e in await asyncio.to_thread(w.store.stream, run_id) if isinstance(e, PermissionDecided)
        ]
        assert [(e.decision, e.decided_via) for e in decided] == [("deny", "http")]

    play(tmp_path, body)


def test_an_allow_for_the_session_answers_later_calls_of_that_tool_in_that_session_only(
    tmp_path: Path,
) -> None:
    async def body(w: World) -> None:
        first = await w.run("s1")
        decision, _ = await w.decide(first, CALL, "allow", session_wide=True)
        assert decision.allowed and decision.scope == "session"
        granted = await w.gate.open(first, CALL)
        assert isinstance(granted, Decision) and granted.allowed
        assert (granted.decided_by, granted.decided_via, granted.scope) == ("grant", "grant", "session")
        assert granted.digest == decision.digest and granted.call == decision.call
        same_session = await w.run("s1")
        assert isinstance(await w.gate.open(same_session, CALL), Decision)
        assert await w.asked(same_session) == 0  # answered by the grant: nothing asked
        other_tool = await w.gate.open(first, OTHER_TOOL)
        assert isinstance(other_tool, Question)  # the grant is for one tool
        other_session = await w.run("s2")
        assert isinstance(await w.gate.open(other_session, CALL), Question)

    play(tmp_path, body)


def test_without_a_session_an_allow_for_the_session_reaches_only_that_run(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_a, run_b = await w.run(), await w.run()
        decision, _ = await w.decide(run_a, CALL, "allow", session_wide=True)
        assert decision.scope == "run"
        assert isinstance(await w.gate.open(run_a, CALL), Decision)
        assert isinstance(await w.gate.open(run_b, CALL), Question)

    play(tmp_path, body)


def test_an_allow_once_or_a_deny_grants_nothing_further(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        await w.decide(run_id, CALL, "allow")
        assert isinstance(await w.gate.open(run_id, CALL), Question)
        other = await w.run("s2")
        await w.decide(other, CALL, "deny", session_wide=True)
        assert isinstance(await w.gate.open(other, CALL), Question)

    play(tmp_path, body)


def test_an_answer_about_other_arguments_decides_nothing(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        opened = await w.gate.open(run_id, CALL)
        assert isinstance(opened, Question)
        qid = opened.asked.question_id
        stale = arguments_digest(CALL.name, '{"path": "b.txt"}')
        assert await answer(w.operator, run_id, qid, "allow", digest=stale) == "digest_mismatch"
        state = fold(run_id, await asyncio.to_thread(w.store.stream, run_id))
        assert qid in state.open_questions
        assert await answer(w.operator, run_id, qid, "allow", digest=opened.asked.digest) == "decided"
        decision = await asyncio.wait_for(w.gate.wait(run_id, opened), 10)
        assert decision.allowed and decision.digest == opened.asked.digest

    play(tmp_path, body)


def test_a_question_expires_after_the_gates_timeout(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        gate = PermissionGate(w.agent, timeout_s=0.2, poll_s=0.05)
        assert gate.timeout_s == 0.2
        opened = await gate.open(run_id, CALL)
        assert isinstance(opened, Question) and opened.timeout_s == 0.2
        asked_at = opened.asked.timestamp
        expires = datetime.fromisoformat(opened.asked.expires_at)
        assert asked_at.tzinfo is not None and expires.tzinfo is not None
        assert timedelta(0) < expires - asked_at <= timedelta(seconds=5)  # in the future, by the timeout
        decision = await asyncio.wait_for(gate.wait(run_id, opened), 10)
        assert decision.allowed is False
        assert (decision.decided_by, decision.decided_via) == ("timeout", "timeout")
        assert decision.call == opened.call and decision.digest == opened.asked.digest
        assert await answer(w.operator, run_id, opened.asked.question_id, "allow") == "already_decided"

    play(tmp_path, body)


def test_an_answer_just_before_the_timeout_denial_stands(tmp_path: Path) -> None:
    """The operator's answer lands after the run's last look and before its timeout denial: the
    denial is refused (the question is no longer open) and the run gets the operator's answer."""

    async def body(w: World) -> None:
        run_id = await w.run("s1")
        gate = PermissionGate(w.agent, timeout_s=0.0, poll_s=0.01)  # times out at once
        opened = await gate.open(run_id, CALL)
        assert isinstance(opened, Question)
        assert (
            await answer(w.operator, run_id, opened.asked.question_id, "allow", requester="eve") == "decided"
        )
        decision = await asyncio.wait_for(gate.wait(run_id, opened), 10)
        assert decision.allowed is True and (decision.decided_by, decision.requester) == ("operator", "eve")
        decided = [
            e for e in await asyncio.to_thread(w.store.stream, run_id) if isinstance(e, PermissionDecided)
        ]
        assert [e.decided_by for e in decided] == ["operator"]  # no timeout denial after it

    play(tmp_path, body)


def test_a_timeout_denial_is_recorded_as_such(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        gate = PermissionGate(w.agent, timeout_s=0.0, poll_s=0.01)
        opened = await gate.open(run_id, CALL)
        assert isinstance(opened, Question)
        before = datetime.now(UTC)
        decision = await asyncio.wait_for(gate.wait(run_id, opened), 10)
        assert decision.allowed is False and decision.question_id == opened.asked.question_id
        decided = [
            e for e in await asyncio.to_thread(w.store.stream, run_id) if isinstance(e, PermissionDecided)
        ]
        assert [(e.decision, e.decided_by, e.decided_via) for e in decided] == [
            ("deny", "timeout", "timeout")
        ]
        assert decided[0].timestamp >= before and decided[0].timestamp.tzinfo is not None

    play(tmp_path, body)


def test_an_operator_answer_is_stamped_now_and_names_no_requester_unless_given(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        opened = await w.gate.open(run_id, CALL)
        assert isinstance(opened, Question)
        before = datetime.now(UTC)
        assert await answer(w.operator, run_id, opened.asked.question_id, "deny") == "decided"
        decided = [
            e for e in await asyncio.to_thread(w.store.stream, run_id) if isinstance(e, PermissionDecided)
        ]
        assert decided[0].requester == "" and decided[0].scope == "once"
        assert before <= decided[0].timestamp <= datetime.now(UTC)

    play(tmp_path, body)


def test_an_answer_with_a_digest_to_an_unknown_question_is_run_ended(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        assert await answer(w.operator, run_id, "no-such", "allow", digest="d" * 64) == "run_ended"

    play(tmp_path, body)


def test_a_waiting_question_takes_only_its_own_answer(tmp_path: Path) -> None:
    """Two questions of one run wait at once (parallel tool calls); only the second is answered,
    and other events follow it: the first still times out as denied."""

    async def body(w: World) -> None:
        run_id = await w.run("s1")
        gate = PermissionGate(w.agent, timeout_s=0.3, poll_s=0.01)
        first = await gate.open(run_id, CALL)
        second = await gate.open(run_id, OTHER_TOOL)
        assert isinstance(first, Question) and isinstance(second, Question)
        assert await answer(w.operator, run_id, second.asked.question_id, "allow") == "decided"
        await w.operator.execute(
            AppendContent(run_id=run_id, at=datetime.now(UTC), text="later"), durable=True
        )
        got_first = await asyncio.wait_for(gate.wait(run_id, first), 10)
        got_second = await asyncio.wait_for(gate.wait(run_id, second), 10)
        assert (got_first.question_id, got_first.allowed, got_first.decided_by) == (
            first.asked.question_id,
            False,
            "timeout",
        )
        assert (got_second.allowed, got_second.decided_by) == (True, "operator")

    play(tmp_path, body)


def test_a_run_that_ended_is_told_run_ended_and_nothing_is_asked(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        run_id = await w.run("s1")
        end = FinishRun(
            run_id=run_id, at=datetime.now(UTC), outcome="final_answer", status_code=200, elapsed_ms=1
        )
        await w.agent.execute(end, durable=True)
        refused = await w.gate.open(run_id, CALL)
        assert isinstance(refused, Decision)
        assert (refused.allowed, refused.decided_by, refused.decided_via) == (False, "run_ended", "run_ended")
        assert await w.asked(run_id) == 0

    play(tmp_path, body)
