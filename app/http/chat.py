"""POST /v1/chat/completions: parse the wire, let the chat service decide, render.

Validation and headers are read here; every decision (tasks, resume, the model
rule, routing, admission) is `app.agent.chat`'s; `chat_render` writes the answer
as one JSON completion or an SSE stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.agent.chat import ChatRequest, Reply, RequestLifecycle
from app.errors import NotFound
from app.http import chat_render
from app.http.deps import HttpDeps
from app.http.messages import client_tools, to_chat_messages, validate_request
from app.http.openapi import SECURITY, DocumentedStream, errors
from app.http.wire import ChatCompletionRequest

__all__ = ["ChatController"]


class ChatController(Controller):
    path = "/v1/chat/completions"
    tags = ("chat",)
    security = SECURITY

    @post(
        status_code=200,
        summary="Create a chat completion (JSON, or SSE when stream is true)",
        operation_class=DocumentedStream,
        responses={
            200: ResponseSpec(
                chat_render.ChatCompletion,
                description="chat.completion, or an SSE stream",
                generate_examples=False,
            ),
            **errors(
                400,
                401,
                404,
                409,
                413,
                429,
                500,
                502,
                503,
                504,
                s400="invalid request, unknown model, override rejected",
                s404="chat disabled, or resumed run not found",
                s409="session busy: the request was queued (the envelope adds run_id, position, session_id)",
                s429="session queue full, or the upstream rate limit after retries",
            ),
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
        validate_request(data)
        watch = _disconnect_watch(request)
        reply = await deps.chat.answer(lifecycle, _chat_request(deps, data, request))
        return await _render(reply, lifecycle, data, watch)


def _chat_request(
    deps: HttpDeps, data: ChatCompletionRequest, request: Request[Any, Any, Any]
) -> ChatRequest:
    """The wire body and headers as the plain values the chat service decides on."""
    headers = request.headers
    tools, ignored = client_tools(data)
    return ChatRequest(
        messages=to_chat_messages(data),
        model=data.model,
        stream=bool(data.stream),
        max_tokens=data.max_completion_tokens or data.max_tokens,
        temperature=data.temperature,
        tools=tools,
        ignored_tools=ignored,
        task_header=headers.get(deps.settings.options.openai_compat.task_header or "X-OpenWebUI-Task"),
        session_header=headers.get("X-BMO-Session-Id"),
        resume=headers.get("X-BMO-Resume-Run-Id") or "",
    )


async def _render(
    reply: Reply, lifecycle: RequestLifecycle, data: ChatCompletionRequest, watch: chat_render.DisconnectWatch
) -> Response[Any]:
    """A task is always JSON; a fixed text and a turn follow `stream` (a turn's client is watched)."""
    meta = chat_render.Meta(reply.id, reply.created, reply.model)
    if reply.shape == "task":  # Open WebUI's background tasks need JSON, whatever `stream` said
        return await chat_render.complete(reply.first, reply.events, lifecycle, meta)
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    return await chat_render.respond(
        reply.first,
        reply.events,
        lifecycle,
        meta,
        bool(data.stream),
        include_usage,
        watch if reply.shape == "turn" else None,
    )


def _disconnect_watch(request: Request[Any, Any, Any]) -> chat_render.DisconnectWatch:
    """Resolves when the client goes away (the body is read: the next ASGI message says so)."""
    receive = request.receive

    async def disconnected() -> None:
        if (await receive())["type"] != "http.disconnect":  # a server that says more: cannot tell
            await asyncio.Event().wait()

    return disconnected
