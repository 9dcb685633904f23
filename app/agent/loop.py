"""The agent loop: model call -> tool calls -> model call ... -> final answer.

It yields what the client should see and reports every step to a `StepSink`
(which records run events). It knows nothing about HTTP or the store.
Rails (SPEC §5): `max_steps`; one recovery prompt when the model answers
nothing after tools (`recovery_failed` if that fails too); up to two
continuations after `finish_reason = "length"` when the client set no limit;
identical tool calls three times in a row are not run again; kubectl retries
exhausted without a later success end the run `k8s_retry_failed`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.agent import guards
from app.agent.activity import details_block
from app.agent.approval import arguments_digest
from app.agent.tools.base import Tool, ToolContext, ToolResult
from app.agent.tools.registry import ToolRegistry
from app.outcomes import Outcome
from app.providers.base import (
    ChatMessage,
    ChatProvider,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSchema,
    Usage,
)

__all__ = [
    "AgentEvent",
    "Approved",
    "ClientToolCalls",
    "Done",
    "Progress",
    "Refused",
    "StepSink",
    "TextChunk",
    "TurnSpec",
    "run_turn",
]


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str
    activity: bool = False  # a tool-activity block, not model text
    transient: bool = False  # shown on this wire only: rebuilt from events on replay, never recorded


@dataclass(frozen=True, slots=True)
class Approved:
    """The call may run, exactly as given (canonical arguments when a question was asked)."""

    call: ToolCall
    digest: str = ""  # the approved arguments digest; "" when no question was needed


@dataclass(frozen=True, slots=True)
class Refused:
    for_model: str  # the tool result the model reads
    for_user: str  # the short factual line a human sees in the tool block


# An authorization streams what the person should see while it waits, then ends with its verdict.
Authorize = Callable[[ToolCall, Tool], AsyncIterator["TextChunk | Approved | Refused"]]


@dataclass(frozen=True, slots=True)
class Progress:
    """The upstream accepted a model call: a stream may now commit to 200."""


@dataclass(frozen=True, slots=True)
class ClientToolCalls:
    """Calls of the client's own tools, passed through on the wire (auto_approve)."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str
    usage: Usage
    outcome: Outcome = "final_answer"


AgentEvent = TextChunk | Progress | ClientToolCalls | Done


class StepSink(Protocol):
    async def model_called(
        self, *, step: int, model: str, usage: Usage, latency_ms: float, finish_reason: str
    ) -> None: ...

    async def tool_called(
        self, *, step: int, call: ToolCall, result: ToolResult, duration_ms: float
    ) -> None: ...


async def _allow_all(call: ToolCall, _tool: Tool) -> AsyncIterator[TextChunk | Approved | Refused]:
    yield Approved(call)


@dataclass(frozen=True, slots=True)
class TurnSpec:
    provider: ChatProvider
    model: str
    messages: tuple[ChatMessage, ...]
    tools: ToolRegistry
    tool_context: ToolContext
    max_steps: int
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = True
    client_tools: tuple[ToolSchema, ...] = ()
    show_tool_activity: bool = True
    authorize: Authorize = _allow_all


@dataclass(slots=True)
class _Turn:
    history: list[ChatMessage]
    usage: Usage = field(default_factory=Usage)
    continuations: int = 0
    recovery_used: bool = False
    after_tools: bool = False
    k8s_failed: bool = False
    repeats: guards.RepeatGuard = field(default_factory=guards.RepeatGuard)

    def outcome(self) -> str:
        return "k8s_retry_failed" if self.k8s_failed else "final_answer"


@dataclass(slots=True)
class _Reply:
    texts: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finished: ModelFinished = field(default_factory=lambda: ModelFinished("stop", Usage()))

    @property
    def text(self) -> str:
        return "".join(self.texts)


async def run_turn(spec: TurnSpec, sink: StepSink) -> AsyncIterator[AgentEvent]:
    turn = _Turn(history=list(spec.messages))
    client_names = {t.name for t in spec.client_tools}
    for step in range(1, spec.max_steps + 1):
        reply = _Reply()
        async for chunk in _call_model(spec, turn, reply, step, sink):
            yield chunk
        if reply.calls:
            agent_calls = [c for c in reply.calls if c.name not in client_names]
            client_calls = tuple(c for c in reply.calls if c.name in client_names)
            turn.history.append(ChatMessage("assistant", reply.text, tool_calls=tuple(agent_calls)))
            for call in agent_calls:
                async for chunk in _run_tool(spec, sink, turn, step, call):
                    yield chunk
            if client_calls:
                yield ClientToolCalls(client_calls)
                yield Done("tool_calls", turn.usage, turn.outcome())
                return
            turn.after_tools = True
            continue
        if _should_continue(spec, turn, reply):
            turn.continuations += 1
            turn.history += [ChatMessage("assistant", reply.text), guards.continue_prompt()]
            continue
        if not reply.text.strip() and turn.after_tools:
            if not turn.recovery_used:
                turn.recovery_used = True
                turn.history.append(guards.recovery_prompt())
                continue
            yield TextChunk(guards.recovery_failed_message())
            yield Done("stop", turn.usage, "recovery_failed")
            return
        yield Done(reply.finished.finish_reason, turn.usage, turn.outcome())
        return
    yield TextChunk(f"\n\n(Stopped: the agent reached max_steps = {spec.max_steps}.)")
    yield Done("length", turn.usage, turn.outcome())


def _should_continue(spec: TurnSpec, turn: _Turn, reply: _Reply) -> bool:
    # a client's own max_tokens is a budget, not an accident: never extend it
    return (
        reply.finished.finish_reason == "length"
        and spec.max_tokens is None
        and turn.continuations < guards.MAX_CONTINUATIONS
    )


async def _call_model(
    spec: TurnSpec, turn: _Turn, reply: _Reply, step: int, sink: StepSink
) -> AsyncIterator[TextChunk | Progress]:
    started = time.perf_counter()
    request = ModelRequest(
        model=spec.model,
        messages=tuple(turn.history),
        tools=spec.tools.schemas() + spec.client_tools,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        stream=spec.stream,
    )
    accepted = False
    async for event in spec.provider.stream(request):
        if not accepted:
            accepted = True
            yield Progress()
        match event:
            case TextDelta(text):
                reply.texts.append(text)
                yield TextChunk(text)
            case ToolCallRequested(call):
                reply.calls.append(call)
            case ModelFinished():
                reply.finished = event
    turn.usage = turn.usage + reply.finished.usage
    await sink.model_called(
        step=step,
        model=spec.model,
        usage=reply.finished.usage,
        latency_ms=(time.perf_counter() - started) * 1000,
        finish_reason=reply.finished.finish_reason,
    )


async def _run_tool(
    spec: TurnSpec, sink: StepSink, turn: _Turn, step: int, call: ToolCall
) -> AsyncIterator[TextChunk]:
    started = time.perf_counter()
    result = ToolResult(ok=False, content="error: the tool call was not executed")
    async for item in _execute(spec, turn, call):
        if isinstance(item, TextChunk):
            yield item
        else:
            result = item
    await sink.tool_called(
        step=step, call=call, result=result, duration_ms=(time.perf_counter() - started) * 1000
    )
    if call.name == "kubectl":
        turn.k8s_failed = result.error_kind == "k8s_retry_exhausted"
    if spec.show_tool_activity:
        yield TextChunk(details_block(call, result), activity=True)
    turn.history.append(ChatMessage("tool", result.content, tool_call_id=call.id, name=call.name))


async def _execute(spec: TurnSpec, turn: _Turn, call: ToolCall) -> AsyncIterator[TextChunk | ToolResult]:
    """Authorize, then run exactly the approved call; re-check its digest right before it runs."""
    if turn.repeats.note(call) >= guards.REPEAT_LIMIT:
        yield ToolResult(ok=False, content=guards.loop_note(call), error_kind="loop_detected")
        return
    tool = spec.tools.get(call.name)
    if tool is None:
        yield await spec.tools.execute(call, spec.tool_context)
        return
    verdict: Approved | Refused = Refused("error: no permission decision was made.", "Not run: no decision.")
    async for item in spec.authorize(call, tool):
        if isinstance(item, TextChunk):
            yield item
        else:
            verdict = item
    if isinstance(verdict, Refused):
        yield ToolResult(False, verdict.for_model, "permission_denied", shown=verdict.for_user)
        return
    if verdict.digest and arguments_digest(verdict.call.name, verdict.call.arguments) != verdict.digest:
        note = "Not run: its arguments differ from the ones approved."
        yield ToolResult(False, f"error: {call.name} was not run: {note}", "permission_denied", shown=note)
        return
    yield await spec.tools.execute(verdict.call, spec.tool_context)
