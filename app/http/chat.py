"""POST /v1/chat/completions: the flow of one chat request.

Order: tasks (Open WebUI background jobs) → resume → model binding and
override policy → ambiguity router → session admission (run, or queue and
409) → the agent turn, rendered as JSON or SSE.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.agent import router
from app.agent.lifecycle import RequestLifecycle
from app.agent.replay import replay_run
from app.agent.sessions import Admission
from app.agent.task_answer import answer_task
from app.agent.tasks import detect_task
from app.agent.transcript import follow_client, message_to_dict, options_to_dict, split_turn
from app.agent.turns import TurnOptions, TurnResult
from app.commands import AppendContent, RecordModelCall
from app.commands.admit_run import SessionQueueFull
from app.commands.note_run import ApplyModelOverride, IgnoreClientTools, MarkResumed
from app.errors import InvalidRequest, NotFound, RateLimited, SessionBusy
from app.events.run import Fired
from app.http import chat_render
from app.http.deps import HttpDeps
from app.http.messages import client_tools, to_chat_messages, validate_request
from app.http.openapi import SECURITY, DocumentedStream, errors
from app.http.wire import ChatCompletionRequest
from app.providers.base import ChatMessage, ToolSchema
from app.providers.catalog import ResolvedModel

__all__ = ["ChatController"]

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RETRY_AFTER_S = "2"


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
        compat = deps.settings.options.openai_compat
        if not compat.enabled:
            raise NotFound(
                "The OpenAI-compatible chat API is disabled ([options.openai_compat] enabled = false)."
            )
        validate_request(data)
        messages = to_chat_messages(data)
        watch = _disconnect_watch(request)
        task = detect_task(
            header_value=request.headers.get(compat.task_header or "X-OpenWebUI-Task"),
            stream=bool(data.stream),
            messages=messages,
        )
        if task is not None:
            return await _task(deps, lifecycle, data, messages, task)
        _check_session_header(request, lifecycle.session_id)
        resume = (request.headers.get("X-BMO-Resume-Run-Id") or "").strip()
        if resume:
            return await _resume(deps, lifecycle, data, resume, watch)
        # a session named by the client's own chat id (Open WebUI) comes with its whole conversation
        full_history = request.headers.get("X-BMO-Session-Id") is None
        return await _chat(deps, lifecycle, data, messages, watch, full_history)


def _disconnect_watch(request: Request[Any, Any, Any]) -> chat_render.DisconnectWatch:
    """Resolves when the client goes away (the body is read: the next ASGI message says so)."""
    receive = request.receive

    async def disconnected() -> None:
        if (await receive())["type"] != "http.disconnect":  # a server that says more: cannot tell
            await asyncio.Event().wait()

    return disconnected


def _check_session_header(request: Request[Any, Any, Any], session_id: str) -> None:
    own = request.headers.get("X-BMO-Session-Id")
    if own is not None and not SESSION_ID.fullmatch(own):
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


async def _options(
    deps: HttpDeps, lifecycle: RequestLifecycle, data: ChatCompletionRequest, mode: str
) -> TurnOptions:
    return TurnOptions(
        max_tokens=data.max_completion_tokens or data.max_tokens,
        temperature=data.temperature,
        stream=bool(data.stream),
        client_tools=await _client_tools(deps, lifecycle, data),
        mode=mode,
    )


async def _client_tools(
    deps: HttpDeps, lifecycle: RequestLifecycle, data: ChatCompletionRequest
) -> tuple[ToolSchema, ...]:
    """chat_only ignores `tools` whatever their shape; auto_approve offers the function
    definitions and drops every other entry, noted as a run event (never a 400)."""
    if deps.settings.options.openai_compat.tool_policy != "auto_approve":
        return ()
    tools, ignored = client_tools(data)
    if ignored:
        await deps.executor.execute(
            IgnoreClientTools(run_id=lifecycle.run_id, at=datetime.now(UTC), entries=list(ignored))
        )
    return tools


def _include_usage(data: ChatCompletionRequest) -> bool:
    return bool(data.stream_options and data.stream_options.include_usage)


async def _bound_model(deps: HttpDeps, lifecycle: RequestLifecycle) -> str:
    """The session's model (read only: nothing here opens or binds a session)."""
    if not lifecycle.session_id or not SESSION_ID.fullmatch(lifecycle.session_id):
        return ""
    session = await deps.sessions.state(lifecycle.session_id)
    return session.model if session.opened else ""


async def _model_for(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    data: ChatCompletionRequest,
    bound: str,
    *,
    stream: bool,
    task: str = "",
) -> tuple[ResolvedModel, bool]:
    """The one model rule of every entry path: fire, resolve, then the override policy.

    Returns the model and whether this request overrides (runs another model than
    the session's, or one that is configured but not advertised).
    """
    model_id = data.model or bound or deps.settings.options.model
    await lifecycle.fire(model=model_id, stream=stream, task=task)
    model = _resolve(deps, model_id)
    overriding = await _apply_override_policy(deps, lifecycle, model_id, bound)
    return model, overriding


async def _task(
    deps: HttpDeps, lifecycle: RequestLifecycle, data: ChatCompletionRequest, messages: tuple, kind: str
) -> Response[Any]:
    """One plain model call answered as JSON: no tools, no router, no session change.

    The advertised-model rule holds here as on every path. A task may name another
    advertised model than the session's (Open WebUI has a task model of its own):
    only a configured-but-not-advertised model is an override.
    """
    bound = await _bound_model(deps, lifecycle)
    model, _ = await _model_for(
        deps, lifecycle, _with_model(data, data.model or bound), "", stream=False, task=kind
    )
    answer = await answer_task(model, messages, kind, data.max_completion_tokens or data.max_tokens)
    now = datetime.now(UTC)
    await deps.executor.execute(
        RecordModelCall(
            run_id=lifecycle.run_id,
            at=now,
            model=model.model,
            step=1,
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            latency_ms=answer.latency_ms,
            finish_reason=answer.finish_reason,
        )
    )
    await deps.executor.execute(AppendContent(run_id=lifecycle.run_id, at=now, text=answer.text))
    meta = chat_render.Meta(f"chatcmpl-{lifecycle.request_id}", int(now.timestamp()), model.id)
    return await chat_render.json_answer(lifecycle, meta, answer.text, answer.finish_reason, answer.usage)


def _with_model(data: ChatCompletionRequest, model: str | None) -> ChatCompletionRequest:
    return msgspec.structs.replace(data, model=model or None)


def _parse_run_id(value: str) -> UUID | None:
    """Any run id the server could have issued, else None (never an exception)."""
    if len(value) > 64 or not value.isascii():
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


async def _resume(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    data: ChatCompletionRequest,
    resume: str,
    watch: chat_render.DisconnectWatch,
) -> Response[Any]:
    """Stream another run of the same session from its first event, then live."""
    bound = await _bound_model(deps, lifecycle)
    await _model_for(deps, lifecycle, data, bound, stream=bool(data.stream))
    run_id = _parse_run_id(resume)
    if run_id is None:
        raise NotFound(
            "X-BMO-Resume-Run-Id is not a run id this server issued.",
            param="X-BMO-Resume-Run-Id",
            code="run_not_found",
        )
    events = await asyncio.to_thread(deps.store.stream, run_id)
    fired = next((e for e in events if isinstance(e, Fired)), None)
    if fired is None or not lifecycle.session_id or fired.session_id != lifecycle.session_id:
        raise NotFound(
            f"No run '{run_id.hex}' in this session to resume.",
            param="X-BMO-Resume-Run-Id",
            code="run_not_found",
        )
    await deps.executor.execute(
        MarkResumed(run_id=lifecycle.run_id, at=datetime.now(UTC), resumed_run=run_id.hex)
    )
    replay = replay_run(deps.store, run_id, questions=deps.turns.questions)
    meta = chat_render.Meta(f"chatcmpl-{run_id.hex}", int(fired.timestamp.timestamp()), fired.model)
    return await chat_render.respond(
        await anext(replay), replay, lifecycle, meta, bool(data.stream), _include_usage(data), watch
    )


async def _chat(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    data: ChatCompletionRequest,
    messages: tuple[ChatMessage, ...],
    watch: chat_render.DisconnectWatch,
    full_history: bool = False,
) -> Response[Any]:
    session_id = lifecycle.session_id
    bound = await _bound_model(deps, lifecycle) if session_id else ""
    model, overriding = await _model_for(deps, lifecycle, data, bound, stream=bool(data.stream))
    # a session binds to its first request's model, never to a one-off override
    binding = bound or (deps.settings.options.model if overriding else model.id)
    earlier, new_turn = split_turn(messages)
    mode = await _route(deps, messages)
    options = await _options(deps, lifecycle, data, mode)
    meta = chat_render.Meta(f"chatcmpl-{lifecycle.request_id}", int(datetime.now(UTC).timestamp()), model.id)
    result = TurnResult()
    history = messages
    if session_id:
        admission = await _admit(deps, lifecycle, binding, new_turn, options, earlier, full_history)
        _release_on_finish(deps, lifecycle, new_turn, result)  # from here on, every end releases
        followed = follow_client(admission.transcript, earlier, new_turn, full_history=full_history)
        await deps.sessions.follow(lifecycle, followed, new_turn)
        history = followed.messages
    if mode == "clarify":
        return await _clarify(deps, lifecycle, data, history, meta, result, watch)
    events = deps.turns.run(lifecycle.run_id, model, history, options, result)
    first = await anext(events)  # an early failure becomes a JSON error, not a broken stream
    return await chat_render.respond(
        first, events, lifecycle, meta, bool(data.stream), _include_usage(data), watch
    )


async def _apply_override_policy(
    deps: HttpDeps, lifecycle: RequestLifecycle, model_id: str, bound: str
) -> bool:
    """Another model than the session's, or one that is configured but not advertised."""
    overriding = bool(bound and model_id != bound) or not deps.catalog.is_advertised(model_id)
    if not overriding:
        return False
    policy = deps.settings.options.openai_compat.model_override_policy
    reference = bound or "the advertised models"
    if policy == "reject":
        raise InvalidRequest(
            f"Model '{model_id}' overrides {reference} and model_override_policy is 'reject'. "
            'Use the session\'s model, or set model_override_policy = "allow_ephemeral".',
            param="model",
            code="model_override_rejected",
            outcome="model_override_rejected",
        )
    lifecycle.note("model_override_applied", bound_model=bound, requested_model=model_id)
    await deps.executor.execute(
        ApplyModelOverride(
            run_id=lifecycle.run_id, at=datetime.now(UTC), bound_model=bound, requested_model=model_id
        )
    )
    return True


async def _route(deps: HttpDeps, messages: tuple[ChatMessage, ...]) -> str:
    """clear → code; ambiguous → by ambiguity_action: clarify | research | code."""
    compat = deps.settings.options.openai_compat
    classifier_model = deps.catalog.resolve(compat.router_model) if compat.router_model else None
    if classifier_model is not None:
        verdict = await router.classify_with_model(
            classifier_model.provider, classifier_model.model, messages
        )
    else:
        verdict = router.classify(messages)
    if verdict == "clear":
        return "code"
    return {"ask": "clarify", "research": "research"}.get(compat.ambiguity_action, "code")


async def _clarify(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    data: ChatCompletionRequest,
    messages: tuple[ChatMessage, ...],
    meta: chat_render.Meta,
    result: TurnResult,
    watch: chat_render.DisconnectWatch,
) -> Response[Any]:
    """Answer with a question instead of running the agent (outcome clarification).

    In a session it is a run like any other: admitted (or queued behind the busy
    run) first, and its question joins the transcript when the run is released.
    """
    text = router.clarification(messages)
    await deps.executor.execute(AppendContent(run_id=lifecycle.run_id, at=datetime.now(UTC), text=text))
    result.texts.append(text)
    return await chat_render.text_answer(
        lifecycle, meta, text, bool(data.stream), _include_usage(data), outcome="clarification"
    )


async def _admit(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    model_id: str,
    new_turn: tuple[ChatMessage, ...],
    options: TurnOptions,
    earlier: tuple[ChatMessage, ...] = (),
    full_history: bool = False,
) -> Admission:
    """Run now, or queue and answer 409, or 429 when the queue is full.

    Admission and queueing are one save (the queued run's turn travels with it).
    """
    session_id = lifecycle.session_id
    try:
        admission = await deps.sessions.admit(
            lifecycle,
            model_id,
            [message_to_dict(m) for m in new_turn],
            [message_to_dict(m) for m in earlier],
            {**options_to_dict(options), "full_history": full_history},
        )
    except SessionQueueFull as exc:
        raise RateLimited(
            f"{exc}. Retry later.", code="session_queue_full", headers={"Retry-After": RETRY_AFTER_S}
        ) from exc
    if admission.active:
        return admission
    raise SessionBusy(
        f"Session '{session_id}' is busy with another run. This request was queued as run "
        f"{admission.run_id} (position {admission.position}); it starts when the session frees. "
        f"Follow it with the header X-BMO-Resume-Run-Id: {admission.run_id}.",
        extra={"run_id": admission.run_id, "position": admission.position, "session_id": session_id},
        headers={"Retry-After": RETRY_AFTER_S},
        outcome="queued",
    )


def _release_on_finish(
    deps: HttpDeps, lifecycle: RequestLifecycle, new_turn: tuple[ChatMessage, ...], result: TurnResult
) -> None:
    async def release(outcome: str) -> None:
        turn = [*(message_to_dict(m) for m in new_turn), result.answer()]
        await deps.sessions.release(lifecycle.session_id, lifecycle.request_id, outcome, turn)

    lifecycle.on_finish.append(release)
