"""Permission questions for mutating tools under `chat_only`.

Questions and answers are run events, so an operator can answer from any
process (`POST /v1/permissions/{id}` appends `PermissionDecided` to the run
stream) and the waiting run sees it by reading its stream. Unanswered
questions are denied after `permission_timeout_s`: no request stalls without
bound. A question carries the complete canonical arguments and their digest;
an allow approves that digest only, and the tool runs with exactly those
arguments (app.agent.approval). "Allow for this session" grants the tool for
the rest of the session (or of the run, when there is no session) for the
life of this server process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from app.agent.approval import arguments_digest, canonical_arguments
from app.commands import AskPermission, DecidePermission
from app.commands.decide_permission import digest_matches
from app.commands.execute import Executor
from app.events.run import PermissionAsked, PermissionDecided
from app.providers.base import ToolCall

__all__ = ["Decision", "PermissionGate", "Question", "answer"]

log = logging.getLogger(__name__)

ANSWERS = ("decided", "already_decided", "run_ended", "digest_mismatch")


@dataclass(frozen=True, slots=True)
class Decision:
    question_id: str
    allowed: bool
    decided_by: str  # operator | timeout | run_ended | grant
    call: ToolCall | None = None  # the exact call approved (canonical arguments)
    digest: str = ""
    decided_via: str = ""
    requester: str = ""
    scope: str = "once"


@dataclass(frozen=True, slots=True)
class Question:
    """A question that was recorded and now waits for its answer."""

    asked: PermissionAsked
    call: ToolCall  # canonical arguments: what runs if allowed
    timeout_s: float


def canonical_call(call: ToolCall) -> ToolCall:
    return ToolCall(id=call.id, name=call.name, arguments=canonical_arguments(call.arguments))


def grant_key(run_id: UUID, session_id: str) -> str:
    """Where an allow_session reaches: the session, or this run when there is none."""
    return f"session:{session_id}" if session_id else f"run:{run_id.hex}"


class PermissionGate:
    def __init__(self, executor: Executor, *, timeout_s: float, poll_s: float = 0.1) -> None:
        self._executor = executor
        self._timeout = timeout_s
        self._poll = poll_s
        self._grants: set[tuple[str, str]] = set()  # (grant key, tool)

    @property
    def timeout_s(self) -> float:
        return self._timeout

    async def open(self, run_id: UUID, call: ToolCall) -> Question | Decision:
        """A standing grant answers at once; otherwise record the question (or refuse if the run ended)."""
        canonical = canonical_call(call)
        state = await self._executor.current(run_id)  # cached: a reload would race our own writes
        if (grant_key(run_id, state.session_id), call.name) in self._grants:
            digest = arguments_digest(call.name, canonical.arguments)
            return Decision("", True, "grant", canonical, digest, "grant", scope="session")
        asked = await self._executor.execute(
            AskPermission(
                run_id=run_id,
                at=datetime.now(UTC),
                question_id=uuid4().hex,
                tool=call.name,
                call_id=call.id,
                arguments=canonical.arguments,
                expires_at=(datetime.now(UTC) + timedelta(seconds=self._timeout)).isoformat(),
            ),
            durable=True,  # the operator must be able to see it before we wait
        )
        if not asked:
            return Decision("", False, "run_ended", decided_via="run_ended")
        event = asked[-1]
        assert isinstance(event, PermissionAsked)
        return Question(event, canonical, self._timeout)

    async def wait(self, run_id: UUID, question: Question) -> Decision:
        """Poll the run's stream for the answer until the question's timeout, then deny.

        A run that ends while it waits (client gone, cancelled, shut down) closes the question in
        the same decision as its end (`CancelRun` / `FinishRun` deny it with `run_ended`).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + question.timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(min(self._poll, max(0.0, deadline - loop.time())))
            decision = await self._find(run_id, question)
            if decision is not None:
                return decision
        return await self._time_out(run_id, question)

    async def _time_out(self, run_id: UUID, question: Question) -> Decision:
        qid = question.asked.question_id
        denied = await self._executor.execute(
            DecidePermission(
                run_id=run_id,
                at=datetime.now(UTC),
                question_id=qid,
                decision="deny",
                decided_by="timeout",
                decided_via="timeout",
            ),
            durable=True,
        )
        if denied:
            return Decision(qid, False, "timeout", question.call, question.asked.digest, "timeout")
        # an operator answered at the last moment: their answer stands
        found = await self._find(run_id, question)
        return found or Decision(qid, False, "timeout", question.call, question.asked.digest, "timeout")

    async def _find(self, run_id: UUID, question: Question) -> Decision | None:
        asked = question.asked
        # the executor drops its cached state when someone else appended (the operator's answer)
        events = await self._executor.events(run_id, asked.originator_version)
        for event in events:
            if isinstance(event, PermissionDecided) and event.question_id == asked.question_id:
                allowed = event.decision == "allow" and event.digest == asked.digest
                if allowed and event.scope in ("session", "run"):
                    self._grants.add((grant_key(run_id, asked.session_id), asked.tool))
                return Decision(
                    asked.question_id,
                    allowed,
                    event.decided_by,
                    question.call,
                    event.digest,
                    event.decided_via,
                    event.requester,
                    event.scope,
                )
        return None


async def answer(
    executor: Executor,
    run_id: UUID,
    question_id: str,
    decision: str,
    requester: str = "",
    *,
    via: str = "http",
    digest: str = "",
    session_wide: bool = False,
) -> str:
    """An operator's answer: "decided", "already_decided", "run_ended" or "digest_mismatch"."""
    command = DecidePermission(
        run_id=run_id,
        at=datetime.now(UTC),
        question_id=question_id,
        decision="deny" if decision == "deny" else "allow",
        decided_by="operator",
        requester=requester,
        decided_via=via,
        digest=digest,
        scope="session" if session_wide else "once",  # the run, when it has no session
    )
    if await executor.execute(command, durable=True):
        return "decided"
    state = await executor.state_of(run_id)
    if question_id in state.decided_questions:
        return "already_decided"
    if question_id in state.open_questions and not digest_matches(state, command):
        return "digest_mismatch"
    return "run_ended"
