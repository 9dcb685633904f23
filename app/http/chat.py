"""POST /v1/chat/completions: wire in, agent turn, JSON or SSE out."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

from app.agent.loop import AgentEvent, ClientToolCalls, Done, TextChunk
from app.agent.turns import TurnOptions
from app.errors import InvalidRequest, NotFound
from app.http import sse
from app.http.deps import HttpDeps
from app.http.errors import envelope, to_bmo_error
from app.http.lifecycle import RequestLifecycle
from app.http.messages import client_tools, to_chat_messages, validate_request
from app.http.wire import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    DeltaToolCall,
    ErrorEnvelope,
    FunctionCall,
    ResponseMessage,
    ResponseToolCall,
    UsageWire,
)
from app.providers.base import ToolCall, Usage
from app.providers.catalog import ResolvedModel

__all__ = ["ChatController"]

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_ALIVE_S = 15.0


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ("chat",)

    @post(
        status_code=200,
        summary="Create a chat completion (JSON, or SSE when stream is true)",
        responses={
            200: ResponseSpec(
                ChatCompletion, description="chat.completion, or an SSE stream of chat.completion.chunk"
            ),
            400: ResponseSpec(ErrorEnvelope, description="invalid request"),
            401: ResponseSpec(ErrorEnvelope, description="missing or wrong bearer token"),
            404: ResponseSpec(ErrorEnvelope, description="chat disabled"),
        },
    )
    async def create(
        self, data: ChatCompletionRequest, request: Request[Any, Any, Any], state: State
    ) -> Response[Any]:
        deps: HttpDeps = state.deps
        lifecycle: RequestLifecycle = request.scope["bmo"]  # type: ignore[typeddict-item]
        if not deps.settings.options.openai_compat.enabled:
            raise NotFound(
                "The OpenAI-compatible chat API is disabled ([options.openai_compat] enabled = false)."
            )
        stream = bool(data.stream)
        model_id = data.model or deps.settings.options.model
        await lifecycle.fire(model=model_id, stream=stream)
        _check_session_header(lifecycle.session_id)
        validate_request(data)
        model = _resolve(deps, model_id)
        options = TurnOptions(
            max_tokens=data.max_completion_tokens or data.max_tokens,
            temperature=data.temperature,
            stream=stream,
            client_tools=client_tools(data),
        )
        events = deps.turns.run(lifecycle.run_id, model, to_chat_messages(data), options)
        first = await anext(events)  # an early failure becomes a JSON error, not a broken stream
        meta = _Meta(f"chatcmpl-{lifecycle.request_id}", int(time.time()), model.id)
        if stream:
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            body = _stream(first, events, lifecycle, meta, include_usage)
            return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)
        return await _complete(first, events, lifecycle, meta)


class _Meta:
    __slots__ = ("created", "id", "model")

    def __init__(self, id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = id, created, model

    def chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])


def _check_session_header(session_id: str) -> None:
    if session_id and not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest(
            "X-BMO-Session-Id must be 1-128 characters of [A-Za-z0-9._:-].",
            param="X-BMO-Session-Id",
            code="invalid_session_id",
        )


def _resolve(deps: HttpDeps, model_id: str) -> ResolvedModel:
    model = deps.catalog.resolve(model_id)
    if model is None:
        known = ", ".join(deps.catalog.advertised()) or "(none)"
        raise InvalidRequest(
            f"The model '{model_id}' does not exist. Available models: {known}.",
            param="model",
            code="model_not_found",
        )
    return model


def _usage(usage: Usage) -> UsageWire:
    return UsageWire(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _wire_calls(calls: tuple[ToolCall, ...]) -> list[ResponseToolCall]:
    return [ResponseToolCall(id=c.id, function=FunctionCall(c.name, c.arguments)) for c in calls]


def _delta_calls(calls: tuple[ToolCall, ...]) -> list[DeltaToolCall]:
    return [
        DeltaToolCall(index=i, id=c.id, function=FunctionCall(c.name, c.arguments))
        for i, c in enumerate(calls)
    ]


async def _complete(
    first: AgentEvent,
    events: AsyncIterator[AgentEvent],
    lifecycle: RequestLifecycle,
    meta: _Meta,
) -> Response[Any]:
    texts: list[str] = []
    calls: tuple[ToolCall, ...] = ()
    event = first
    while not isinstance(event, Done):
        if isinstance(event, TextChunk):
            texts.append(event.text)
        elif isinstance(event, ClientToolCalls):
            calls = event.calls
        event = await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    message = ResponseMessage(
        role="assistant",
        content="".join(texts) or (None if calls else ""),
        tool_calls=_wire_calls(calls) if calls else None,
    )
    completion = ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[Choice(index=0, message=message, finish_reason=event.finish_reason)],
        usage=_usage(event.usage),
    )
    await lifecycle.finish(event.outcome, 200, finish_reason=event.finish_reason)
    return Response(completion, status_code=200, media_type="application/json")


async def _stream(
    first: AgentEvent,
    events: AsyncIterator[AgentEvent],
    lifecycle: RequestLifecycle,
    meta: _Meta,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    upcoming = _KeepAlive(events)
    try:
        yield sse.event(meta.chunk(Delta(role="assistant", content="")))
        event: AgentEvent | None = first
        while not isinstance(event, Done):
            if isinstance(event, TextChunk):
                yield sse.event(meta.chunk(Delta(content=event.text)))
            elif isinstance(event, ClientToolCalls):
                yield sse.event(meta.chunk(Delta(tool_calls=_delta_calls(event.calls))))
            event = await upcoming.next()
            while event is None:  # tools are still running: keep proxies and clients patient
                yield sse.KEEP_ALIVE
                event = await upcoming.next()
        yield sse.event(meta.chunk(Delta(), finish_reason=event.finish_reason))
        if include_usage:
            usage = ChatCompletionChunk(
                id=meta.id, created=meta.created, model=meta.model, choices=[], usage=_usage(event.usage)
            )
            yield sse.event(usage)
        await lifecycle.finish(event.outcome, 200, finish_reason=event.finish_reason)
        yield sse.DONE
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away. Cancellation may be level-triggered (anyio), so no
        # awaiting here: stop the agent (its tools' processes die with it) and let
        # the lifecycle record `cancelled` in a task of its own.
        upcoming.abandon()
        lifecycle.finish_later("cancelled", 499, error="client disconnected")
        raise
    except Exception as exc:  # after headers, errors travel in the stream
        upcoming.abandon()
        error = to_bmo_error(exc)
        yield sse.event(envelope(error))
        yield sse.DONE
        await lifecycle.finish("error_500", error.status, error=error.message)
    else:
        await events.aclose()  # type: ignore[attr-defined]


class _KeepAlive:
    """Pulls the next agent event in a task so the stream can say `: keep-alive` meanwhile."""

    def __init__(self, events: AsyncIterator[AgentEvent], every_s: float = KEEP_ALIVE_S) -> None:
        self._events = events
        self._every = every_s
        self._pending: asyncio.Task[AgentEvent] | None = None

    async def next(self) -> AgentEvent | None:
        """The next event, or None when `every_s` passed without one."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._events))
        done, _ = await asyncio.wait({self._pending}, timeout=self._every)
        if not done:
            return None
        task, self._pending = self._pending, None
        return task.result()

    def abandon(self) -> None:
        """Cancel the pull in flight; the agent generator unwinds inside that task."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
