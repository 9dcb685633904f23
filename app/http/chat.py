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

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from app.agent import router
from app.agent.lifecycle import RequestLifecycle
from app.agent.replay import replay_run
from app.agent.sessions import Admission
from app.agent.task_answer import answer_task
from app.agent.tasks import detect_task
from app.agent.transcript import history_for, message_to_dict, options_to_dict, split_turn
from app.agent.turns import TurnOptions, TurnResult
from app.commands import AppendContent, RecordModelCall
from app.commands.admit_run import SessionQueueFull
from app.commands.note_run import ApplyModelOverride, MarkResumed
from app.commands.note_turn import NoteTurn
from app.errors import InvalidRequest, NotFound, RateLimited, SessionBusy
from app.events.run import Fired
from app.events.session import session_uuid
from app.http import chat_render
from app.http.deps import HttpDeps
from app.http.messages import client_tools, to_chat_messages, validate_request
from app.http.openapi import SECURITY, DocumentedStream, errors
from app.http.wire import ChatCompletionRequest
from app.providers.base import ChatMessage
from app.providers.catalog import ResolvedModel

__all__ = ["ChatController"]

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RUN_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F-]{36}")
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
        task = detect_task(
            header_value=request.headers.get(compat.task_header or "X-OpenWebUI-Task"),
            stream=bool(data.stream),
            messages=messages,
        )
        if task is not None:
            return await _task(deps, lifecycle, data, messages, task)
        _check_session_header(request, lifecycle.session_id)
        resume = request.headers.get("X-BMO-Resume-Run-Id")
        if resume:
            return await _resume(deps, lifecycle, data, resume)
        return await _chat(deps, lifecycle, data, messages)


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


def _options(data: ChatCompletionRequest, mode: str) -> TurnOptions:
    return TurnOptions(
        max_tokens=data.max_completion_tokens or data.max_tokens,
        temperature=data.temperature,
        stream=bool(data.stream),
        client_tools=client_tools(data),
        mode=mode,
    )


def _include_usage(data: ChatCompletionRequest) -> bool:
    return bool(data.stream_options and data.stream_options.include_usage)


async def _task(
    deps: HttpDeps, lifecycle: RequestLifecycle, data: ChatCompletionRequest, messages: tuple, kind: str
) -> Response[Any]:
    """One plain model call answered as JSON: no tools, no router, no session."""
    model_id = data.model or deps.settings.options.model
    await lifecycle.fire(model=model_id, stream=False, task=kind)
    model = _resolve(deps, model_id)
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


async def _resume(
    deps: HttpDeps, lifecycle: RequestLifecycle, data: ChatCompletionRequest, resume: str
) -> Response[Any]:
    """Stream another run of the same session from its first event, then live."""
    await lifecycle.fire(model=data.model or "", stream=bool(data.stream))
    if not RUN_ID.fullmatch(resume):
        raise NotFound(f"No run '{resume}' to resume.", param="X-BMO-Resume-Run-Id", code="run_not_found")
    run_id = UUID(resume)
    events = await asyncio.to_thread(deps.store.stream, run_id)
    fired = next((e for e in events if isinstance(e, Fired)), None)
    if fired is None or not lifecycle.session_id or fired.session_id != lifecycle.session_id:
        raise NotFound(
            f"No run '{resume}' in this session to resume.", param="X-BMO-Resume-Run-Id", code="run_not_found"
        )
    await deps.executor.execute(
        MarkResumed(run_id=lifecycle.run_id, at=datetime.now(UTC), resumed_run=run_id.hex)
    )
    replay = replay_run(deps.store, run_id, questions=deps.turns.questions)
    meta = chat_render.Meta(f"chatcmpl-{run_id.hex}", int(fired.timestamp.timestamp()), fired.model)
    return await chat_render.respond(
        await anext(replay), replay, lifecycle, meta, bool(data.stream), _include_usage(data)
    )


async def _chat(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    data: ChatCompletionRequest,
    messages: tuple[ChatMessage, ...],
) -> Response[Any]:
    session = await deps.sessions.state(lifecycle.session_id) if lifecycle.session_id else None
    bound = session.model if session and session.opened else ""
    model_id = data.model or bound or deps.settings.options.model
    await lifecycle.fire(model=model_id, stream=bool(data.stream))
    model = _resolve(deps, model_id)
    await _apply_override_policy(deps, lifecycle, model_id, bound)
    earlier, new_turn = split_turn(messages)
    mode = await _route(deps, lifecycle, messages)
    meta = chat_render.Meta(f"chatcmpl-{lifecycle.request_id}", int(datetime.now(UTC).timestamp()), model.id)
    if mode == "clarify":
        return await _clarify(deps, lifecycle, data, messages, new_turn, bound or model_id, meta)
    options = _options(data, mode)
    history = messages
    result = TurnResult()
    if session is not None:
        admission = await _admit(deps, lifecycle, bound or model_id, new_turn, options)
        history = history_for(admission.transcript, earlier, new_turn)
        _release_on_finish(deps, lifecycle, new_turn, result)
    events = deps.turns.run(lifecycle.run_id, model, history, options, result)
    first = await anext(events)  # an early failure becomes a JSON error, not a broken stream
    return await chat_render.respond(first, events, lifecycle, meta, bool(data.stream), _include_usage(data))


async def _apply_override_policy(
    deps: HttpDeps, lifecycle: RequestLifecycle, model_id: str, bound: str
) -> None:
    """Another model than the session's, or one that is configured but not advertised."""
    overriding = (bound and model_id != bound) or not deps.catalog.is_advertised(model_id)
    if not overriding:
        return
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


async def _route(deps: HttpDeps, lifecycle: RequestLifecycle, messages: tuple[ChatMessage, ...]) -> str:
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
    new_turn: tuple[ChatMessage, ...],
    model_id: str,
    meta: chat_render.Meta,
) -> Response[Any]:
    """Answer with a question instead of running the agent (outcome clarification)."""
    text = router.clarification(messages)
    now = datetime.now(UTC)
    await deps.executor.execute(AppendContent(run_id=lifecycle.run_id, at=now, text=text))
    if lifecycle.session_id:
        turn = [*(message_to_dict(m) for m in new_turn), {"role": "assistant", "content": text}]
        await deps.executor.execute(
            NoteTurn(
                stream_id=session_uuid(lifecycle.session_id),
                at=now,
                session_id=lifecycle.session_id,
                model=model_id,
                requester=lifecycle.requester,
                turn=turn,
            ),
            durable=True,
        )
    return await chat_render.text_answer(
        lifecycle, meta, text, bool(data.stream), _include_usage(data), outcome="clarification"
    )


async def _admit(
    deps: HttpDeps,
    lifecycle: RequestLifecycle,
    model_id: str,
    new_turn: tuple[ChatMessage, ...],
    options: TurnOptions,
) -> Admission:
    """Run now, or queue and answer 409, or 429 when the queue is full."""
    session_id = lifecycle.session_id
    try:
        admission = await deps.sessions.admit(session_id, lifecycle.request_id, model_id, lifecycle.requester)
    except SessionQueueFull as exc:
        raise RateLimited(
            f"{exc}. Retry later.", code="session_queue_full", headers={"Retry-After": RETRY_AFTER_S}
        ) from exc
    if admission.active:
        return admission
    await deps.sessions.defer(
        lifecycle, admission, [message_to_dict(m) for m in new_turn], options_to_dict(options)
    )
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
