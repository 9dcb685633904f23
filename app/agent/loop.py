"""The agent loop: model call -> tool calls -> model call ... -> final answer.

It yields what the client should see and reports every step to a
`StepSink` (which records run events). It knows nothing about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from app.agent.tools.base import ToolContext, ToolResult
from app.agent.tools.registry import ToolRegistry
from app.providers.base import (
    ChatMessage,
    ChatProvider,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    Usage,
)

__all__ = ["AgentEvent", "Done", "StepSink", "TextChunk", "run_turn"]


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str
    usage: Usage


AgentEvent = TextChunk | Done


class StepSink(Protocol):
    async def model_called(
        self, *, step: int, model: str, usage: Usage, latency_ms: float, finish_reason: str
    ) -> None: ...

    async def tool_called(
        self, *, step: int, call: ToolCall, result: ToolResult, duration_ms: float
    ) -> None: ...


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


async def run_turn(spec: TurnSpec, sink: StepSink) -> AsyncIterator[AgentEvent]:
    history = list(spec.messages)
    usage = Usage()
    for step in range(1, spec.max_steps + 1):
        texts: list[str] = []
        calls: list[ToolCall] = []
        finished = ModelFinished("stop", Usage())
        started = time.perf_counter()
        request = ModelRequest(
            model=spec.model,
            messages=tuple(history),
            tools=spec.tools.schemas(),
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
        )
        async for event in spec.provider.stream(request):
            match event:
                case TextDelta(text):
                    texts.append(text)
                    yield TextChunk(text)
                case ToolCallRequested(call):
                    calls.append(call)
                case ModelFinished():
                    finished = event
        usage = usage + finished.usage
        await sink.model_called(
            step=step,
            model=spec.model,
            usage=finished.usage,
            latency_ms=(time.perf_counter() - started) * 1000,
            finish_reason=finished.finish_reason,
        )
        if not calls:
            yield Done(finished.finish_reason, usage)
            return
        history.append(ChatMessage("assistant", "".join(texts), tool_calls=tuple(calls)))
        for call in calls:
            history.append(await _call_tool(spec, sink, step, call))
    note = f"\n\n(Stopped: the agent reached max_steps = {spec.max_steps}.)"
    yield TextChunk(note)
    yield Done("length", usage)


async def _call_tool(spec: TurnSpec, sink: StepSink, step: int, call: ToolCall) -> ChatMessage:
    started = time.perf_counter()
    result = await spec.tools.execute(call, spec.tool_context)
    await sink.tool_called(
        step=step, call=call, result=result, duration_ms=(time.perf_counter() - started) * 1000
    )
    return ChatMessage("tool", result.content, tool_call_id=call.id, name=call.name)
