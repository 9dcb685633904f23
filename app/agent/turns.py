"""Starts a run's agent turn and records it: the seam HTTP (and later the TUI) drive.

The tool policy lives here (SPEC §5, §6): read-only tools and
`[permissions].allowed_tools` run freely; under `chat_only` any other
mutating tool asks an operator first; under `auto_approve` the agent's own
tools are approved and the client's tools are offered to the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from app.agent.loop import (
    AgentEvent,
    Approved,
    ClientToolCalls,
    Done,
    Progress,
    Refused,
    TextChunk,
    TurnSpec,
    run_turn,
)
from app.agent.permissions import Decision, PermissionGate
from app.agent.question_block import QuestionView, decision_line
from app.agent.recorder import RunRecorder
from app.agent.router import RESEARCH_PROMPT
from app.agent.tools.base import Tool, ToolContext
from app.agent.tools.registry import ToolRegistry
from app.commands import StartRun
from app.commands.execute import Executor
from app.errors import PersistFailed
from app.providers.base import ChatMessage, ToolCall, ToolSchema
from app.providers.catalog import ResolvedModel
from app.tracing import Tracing

__all__ = ["TurnOptions", "TurnPolicy", "TurnResult", "TurnRunner"]


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    tool_policy: str  # chat_only | auto_approve
    allowed_tools: frozenset[str]
    max_steps: int
    show_tool_activity: bool


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """Per-request knobs from the wire (plain data: a queued run stores them)."""

    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = True
    client_tools: tuple[ToolSchema, ...] = ()
    mode: str = "code"  # code: every tool | research: read-only tools and a research prompt


@dataclass(slots=True)
class TurnResult:
    """What the turn said, for the session transcript."""

    texts: list[str] = field(default_factory=list)
    client_calls: tuple[ToolCall, ...] = ()

    def answer(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.texts)}
        if self.client_calls:
            message["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.client_calls
            ]
        return message


class TurnRunner:
    def __init__(
        self,
        executor: Executor,
        tools: Callable[[], ToolRegistry],
        workspace: Path,
        policy: TurnPolicy,
        gate: PermissionGate,
        *,
        tracing: Tracing | None = None,
        questions: QuestionView | None = None,
    ) -> None:
        self._executor = executor
        self._tracing = tracing if tracing is not None else Tracing()
        self._tools = tools  # a callable: MCP tools appear once their servers are up
        self._context = ToolContext(workspace=workspace.resolve())
        self._policy = policy
        self._gate = gate
        self.questions = questions or QuestionView(None, gate.timeout_s if gate is not None else 0.0)

    async def run(
        self,
        run_id: UUID,
        model: ResolvedModel,
        messages: tuple[ChatMessage, ...],
        options: TurnOptions | None = None,
        result: TurnResult | None = None,
    ) -> AsyncIterator[AgentEvent]:
        options = options or TurnOptions()
        result = result if result is not None else TurnResult()
        done: Done | None = None
        self._tracing.turn_started(run_id.hex, model.id)
        recorder = RunRecorder(self._executor, run_id, self._tracing, model.provider.name)
        try:
            await self._executor.execute(
                StartRun(run_id=run_id, at=datetime.now(UTC), model=model.id, message_count=len(messages))
            )
            async for event in run_turn(self._spec(run_id, model, messages, options, recorder), recorder):
                if isinstance(event, TextChunk):
                    if not event.transient:  # rebuilt from its events on replay: never stored
                        await recorder.content(event.text)
                    if not event.activity and not event.transient:
                        result.texts.append(event.text)
                elif isinstance(event, ClientToolCalls):
                    result.client_calls = event.calls
                    await recorder.flush()
                elif not isinstance(event, Progress):
                    await recorder.flush()
                if isinstance(event, Done):
                    done = event
                yield event
        except Exception:
            await recorder.flush()  # what the client already received stays replayable
            raise
        finally:
            self._tracing.turn_ended(run_id.hex, done.outcome if done is not None else None)

    def _spec(
        self,
        run_id: UUID,
        model: ResolvedModel,
        messages: tuple[ChatMessage, ...],
        options: TurnOptions,
        recorder: RunRecorder,
    ) -> TurnSpec:
        tools = self._tools()
        if options.mode == "research":  # investigate, change nothing
            tools = tools.read_only()
            messages = (ChatMessage("system", RESEARCH_PROMPT), *messages)
        auto = self._policy.tool_policy == "auto_approve"
        client_tools = tuple(t for t in options.client_tools if t.name not in tools) if auto else ()

        async def authorize(call: ToolCall, tool: Tool) -> AsyncIterator[TextChunk | Approved | Refused]:
            if not tool.mutating or auto or call.name in self._policy.allowed_tools:
                yield Approved(call)
                return
            await recorder.flush()  # the question lands after what the client already saw
            try:
                opened = await self._gate.open(run_id, call)
            except PersistFailed:  # nobody could see the question: deny rather than wait
                yield Refused(
                    f"error: permission denied for {call.name}: the question could not be recorded.",
                    "Not run: the permission question could not be recorded.",
                )
                return
            if isinstance(opened, Decision):  # a standing grant, or the run already ended
                yield _verdict(call, opened, self._gate.timeout_s)
                return
            if options.stream:  # a JSON answer comes too late for a question: it gets the outcome line
                yield TextChunk(self.questions.block(opened.asked), transient=True)
            decision = await self._gate.wait(run_id, opened)
            yield TextChunk(_line(decision, self._gate.timeout_s), transient=True)
            yield _verdict(call, decision, self._gate.timeout_s)

        return TurnSpec(
            provider=model.provider,
            model=model.model,
            messages=messages,
            tools=tools,
            tool_context=self._context,
            max_steps=self._policy.max_steps,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            stream=options.stream,
            client_tools=client_tools,
            show_tool_activity=self._policy.show_tool_activity,
            authorize=authorize,
        )


def _line(decision: Decision, timeout_s: float) -> str:
    verb = "allow" if decision.allowed else "deny"
    return decision_line(
        verb, decision.decided_by, decision.decided_via, decision.requester, decision.scope, timeout_s
    )


def _verdict(call: ToolCall, decision: Decision, timeout_s: float) -> Approved | Refused:
    """Allowed: exactly the approved call. Denied: an instruction for the model, a short line for people."""
    if decision.allowed and decision.call is not None:
        return Approved(decision.call, decision.digest)
    why = {"timeout": "no operator answered in time", "run_ended": "the run ended"}.get(
        decision.decided_by, "an operator denied it"
    )
    line = decision_line(
        "deny", decision.decided_by, decision.decided_via, decision.requester, "once", timeout_s
    ).strip()
    return Refused(
        f"error: permission denied for {call.name}: {why}. It was not run. Do not retry it; "
        "tell the user what you would have done and that it needs approval.",
        f"Not run. {line}",
    )
