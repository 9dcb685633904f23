"""Permission questions for mutating tools under `chat_only` (SPEC §5).

Questions and answers are run events, so an operator can answer from any
process (`POST /v1/permissions/{id}` appends `PermissionDecided` to the run
stream) and the waiting run sees it by reading its stream. Unanswered
questions are denied after `permission_timeout_s`: no request stalls without
bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from app.commands import AskPermission, DecidePermission
from app.commands.execute import Executor
from app.events.run import PermissionDecided
from app.events.store import EventStore
from app.providers.base import ToolCall

__all__ = ["Decision", "PermissionGate", "answer"]


@dataclass(frozen=True, slots=True)
class Decision:
    question_id: str
    allowed: bool
    decided_by: str  # operator | timeout


class PermissionGate:
    def __init__(
        self, executor: Executor, store: EventStore, *, timeout_s: float, poll_s: float = 0.1
    ) -> None:
        self._executor = executor
        self._store = store
        self._timeout = timeout_s
        self._poll = poll_s

    async def ask(self, run_id: UUID, call: ToolCall) -> Decision:
        question_id = uuid4().hex
        expires = datetime.now(UTC) + timedelta(seconds=self._timeout)
        asked = await self._executor.execute(
            AskPermission(
                run_id=run_id,
                at=datetime.now(UTC),
                question_id=question_id,
                tool=call.name,
                call_id=call.id,
                arguments=call.arguments,
                expires_at=expires.isoformat(),
            ),
            durable=True,  # the operator must be able to see it before we wait
        )
        if not asked:
            return Decision(question_id, False, "run_ended")
        version = asked[-1].originator_version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while loop.time() < deadline:
            await asyncio.sleep(min(self._poll, max(0.0, deadline - loop.time())))
            decision = await self._find(run_id, question_id, version)
            if decision is not None:
                return decision
        return await self._time_out(run_id, question_id, version)

    async def _time_out(self, run_id: UUID, question_id: str, version: int) -> Decision:
        denied = await self._executor.execute(
            DecidePermission(
                run_id=run_id,
                at=datetime.now(UTC),
                question_id=question_id,
                decision="deny",
                decided_by="timeout",
            ),
            durable=True,
        )
        if denied:
            return Decision(question_id, False, "timeout")
        # an operator answered at the last moment: their answer stands
        found = await self._find(run_id, question_id, version)
        return found or Decision(question_id, False, "timeout")

    async def _find(self, run_id: UUID, question_id: str, version: int) -> Decision | None:
        events = await asyncio.to_thread(self._store.stream, run_id, version)
        for event in events:
            if isinstance(event, PermissionDecided) and event.question_id == question_id:
                self._executor.forget(run_id)  # someone else appended: reload before writing
                return Decision(question_id, event.decision == "allow", event.decided_by)
        return None


async def answer(
    executor: Executor, run_id: UUID, question_id: str, decision: str, requester: str = ""
) -> str:
    """An operator's answer. Returns "decided", "already_decided" or "run_ended"."""
    decided = await executor.execute(
        DecidePermission(
            run_id=run_id,
            at=datetime.now(UTC),
            question_id=question_id,
            decision="allow" if decision == "allow" else "deny",
            decided_by="operator",
            requester=requester,
        ),
        durable=True,
    )
    if decided:
        return "decided"
    state = await executor.state_of(run_id)
    return "already_decided" if question_id in state.decided_questions else "run_ended"
