"""The chat use case: one request in, an answer (a stream of agent events) out.

HTTP parses the wire into a `ChatRequest` and renders the `Reply`; every
decision in between lives here, in this order: tasks (Open WebUI background
jobs) → resume → model binding and override policy → ambiguity router →
session admission (run, or queue and 409) → the agent turn or a clarification,
and the session's release when the run ends.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from app.agent import router
from app.agent.lifecycle import RequestLifecycle
from app.agent.loop import AgentEvent, Done, TextChunk
from app.agent.replay import replay_run
from app.agent.sessions import Admission, SessionService
from app.agent.task_answer import answer_task
from app.agent.tasks import detect_task
from app.agent.transcript import follow_client, message_to_dict, options_to_dict, split_turn
from app.agent.turns import TurnOptions, TurnResult, TurnRunner
from app.commands import AppendContent, RecordModelCall
from app.commands.execute import Executor
from app.commands.note_run import ApplyModelOverride, IgnoreClientTools, MarkResumed
from app.config import Settings
from app.errors import InvalidRequest, NotFound, SessionBusy
from app.events.run import Fired
from app.providers.base import ChatMessage, ToolSchema, Usage
from app.providers.catalog import ModelCatalog, ResolvedModel

__all__ = ["ChatRequest", "ChatService", "Reply", "RequestLifecycle", "admit"]

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RETRY_AFTER_S = "2"
Shape = Literal["task", "fixed", "turn"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request as plain values: what the client asked, already validated by HTTP."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[ToolSchema, ...] = ()
    ignored_tools: tuple[str, ...] = ()  # entries of `tools` that are no function definition
    task_header: str | None = None  # the background-task header's value, if sent
    session_header: str | None = None  # the client's own session id, if it named one
    resume: str = ""  # the run id the client asks to follow again


@dataclass(frozen=True, slots=True)
class Reply:
    """What to render: the completion's id, time and model, and the agent's events.

    `shape` says how: a task is always one JSON completion; a fixed text (a
    clarification) and a turn follow the client's `stream`; only a turn's
    non-streaming client is watched for a disconnect.
    """

    id: str
    created: int
    model: str
    first: AgentEvent
    events: AsyncIterator[AgentEvent]
    shape: Shape = "turn"


@dataclass(slots=True)
class _Turn:
    """One chat turn under way: what the steps between model and agent pass on."""

    model: ResolvedModel
    history: tuple[ChatMessage, ...]
    options: TurnOptions
    result: TurnResult = field(default_factory=TurnResult)


async def _ending(done: Done) -> AsyncIterator[AgentEvent]:
    yield done


class ChatService:
    """Decides a chat request: built once by bootstrap, used by the HTTP route."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: ModelCatalog,
        turns: TurnRunner,
        executor: Executor,
        sessions: SessionService,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._turns = turns
        self._executor = executor
        self._sessions = sessions

    async def answer(self, lifecycle: RequestLifecycle, request: ChatRequest) -> Reply:
        """The one entry: a task, a resumed run, or a chat turn (raises BmoErrors for the client)."""
        task = detect_task(header_value=request.task_header, stream=request.stream, messages=request.messages)
        if task is not None:
            return await self._task(lifecycle, request, task)
        _check_session_id(request.session_header)
        if request.resume.strip():
            return await self._resume(lifecycle, request, request.resume.strip())
        return await self._chat(lifecycle, request)

    async def _task(self, lifecycle: RequestLifecycle, request: ChatRequest, kind: str) -> Reply:
        """One plain model call answered as JSON: no tools, no router, no session change.

        The advertised-model rule holds here as on every path. A task may name another
        advertised model than the session's (Open WebUI has a task model of its own):
        only a configured-but-not-advertised model is an override.
        """
        bound = await self._bound_model(lifecycle)
        model_id = request.model or bound or None
        model, _ = await self._model_for(lifecycle, model_id, "", stream=False, task=kind)
        answer = await answer_task(model, request.messages, kind, request.max_tokens)
        now = datetime.now(UTC)
        await self._executor.execute(
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
        await self._executor.execute(AppendContent(run_id=lifecycle.run_id, at=now, text=answer.text))
        done = Done(answer.finish_reason, answer.usage)
        return Reply(
            f"chatcmpl-{lifecycle.request_id}",
            int(now.timestamp()),
            model.id,
            TextChunk(answer.text),
            _ending(done),
            "task",
        )

    async def _resume(self, lifecycle: RequestLifecycle, request: ChatRequest, resume: str) -> Reply:
        """Stream another run of the same session from its first event, then live."""
        bound = await self._bound_model(lifecycle)
        await self._model_for(lifecycle, request.model, bound, stream=request.stream)
        run_id = _parse_run_id(resume)
        if run_id is None:
            raise NotFound(
                "X-BMO-Resume-Run-Id is not a run id this server issued.",
                param="X-BMO-Resume-Run-Id",
                code="run_not_found",
            )
        events = await self._executor.events(run_id)
        fired = next((e for e in events if isinstance(e, Fired)), None)
        if fired is None or not lifecycle.session_id or fired.session_id != lifecycle.session_id:
            raise NotFound(
                f"No run '{run_id.hex}' in this session to resume.",
                param="X-BMO-Resume-Run-Id",
                code="run_not_found",
            )
        await self._executor.execute(
            MarkResumed(run_id=lifecycle.run_id, at=datetime.now(UTC), resumed_run=run_id.hex)
        )
        replay = replay_run(self._executor.events, run_id, questions=self._turns.questions)
        created = int(fired.timestamp.timestamp())
        return Reply(f"chatcmpl-{run_id.hex}", created, fired.model, await anext(replay), replay)

    async def _chat(self, lifecycle: RequestLifecycle, request: ChatRequest) -> Reply:
        session_id = lifecycle.session_id
        # a session named by the client's own chat id (Open WebUI) comes with its whole conversation
        full_history = request.session_header is None
        bound = await self._bound_model(lifecycle) if session_id else ""
        model, overriding = await self._model_for(lifecycle, request.model, bound, stream=request.stream)
        # a session binds to its first request's model, never to a one-off override
        binding = bound or (self._settings.options.model if overriding else model.id)
        earlier, new_turn = split_turn(request.messages)
        mode = await self._route(request.messages)
        options = await self._options(lifecycle, request, mode)
        turn = _Turn(model, request.messages, options)
        created = int(datetime.now(UTC).timestamp())
        if session_id:
            admission = await admit(
                self._sessions, lifecycle, binding, new_turn, options, earlier, full_history
            )
            self._release_on_finish(lifecycle, new_turn, turn.result)  # from here on, every end releases
            followed = follow_client(admission.transcript, earlier, new_turn, full_history=full_history)
            await self._sessions.follow(lifecycle, followed, new_turn)
            turn.history = followed.messages
        if mode == "clarify":
            first, events = await self._clarify(lifecycle, turn)
            return Reply(f"chatcmpl-{lifecycle.request_id}", created, model.id, first, events, "fixed")
        events = self._turns.run(lifecycle.run_id, model, turn.history, options, turn.result)
        first = await anext(events)  # an early failure becomes a JSON error, not a broken stream
        return Reply(f"chatcmpl-{lifecycle.request_id}", created, model.id, first, events)

    async def _bound_model(self, lifecycle: RequestLifecycle) -> str:
        """The session's model (read only: nothing here opens or binds a session)."""
        if not lifecycle.session_id or not SESSION_ID.fullmatch(lifecycle.session_id):
            return ""
        session = await self._sessions.state(lifecycle.session_id)
        return session.model if session.opened else ""

    async def _model_for(
        self,
        lifecycle: RequestLifecycle,
        requested: str | None,
        bound: str,
        *,
        stream: bool,
        task: str = "",
    ) -> tuple[ResolvedModel, bool]:
        """The one model rule of every entry path: fire, resolve, then the override policy.

        Returns the model and whether this request overrides (runs another model than
        the session's, or one that is configured but not advertised).
        """
        model_id = requested or bound or self._settings.options.model
        await lifecycle.fire(model=model_id, stream=stream, task=task)
        model = self._resolve(model_id)
        overriding = await self._apply_override_policy(lifecycle, model_id, bound)
        return model, overriding

    def _resolve(self, model_id: str) -> ResolvedModel:
        model = self._catalog.resolve(model_id)
        if model is None:
            known = ", ".join(self._catalog.advertised()) or "(none)"
            raise InvalidRequest(
                f"The model '{model_id}' does not exist. Available models: {known}.",
                param="model",
                code="model_not_found",
            )
        return model

    async def _apply_override_policy(self, lifecycle: RequestLifecycle, model_id: str, bound: str) -> bool:
        """Another model than the session's, or one that is configured but not advertised."""
        overriding = bool(bound and model_id != bound) or not self._catalog.is_advertised(model_id)
        if not overriding:
            return False
        policy = self._settings.options.openai_compat.model_override_policy
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
        await self._executor.execute(
            ApplyModelOverride(
                run_id=lifecycle.run_id, at=datetime.now(UTC), bound_model=bound, requested_model=model_id
            )
        )
        return True

    async def _options(self, lifecycle: RequestLifecycle, request: ChatRequest, mode: str) -> TurnOptions:
        return TurnOptions(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stream=request.stream,
            client_tools=await self._client_tools(lifecycle, request),
            mode=mode,
        )

    async def _client_tools(
        self, lifecycle: RequestLifecycle, request: ChatRequest
    ) -> tuple[ToolSchema, ...]:
        """chat_only ignores `tools` whatever their shape; auto_approve offers the function
        definitions and drops every other entry, noted as a run event (never a 400)."""
        if self._settings.options.openai_compat.tool_policy != "auto_approve":
            return ()
        if request.ignored_tools:
            await self._executor.execute(
                IgnoreClientTools(
                    run_id=lifecycle.run_id, at=datetime.now(UTC), entries=list(request.ignored_tools)
                )
            )
        return request.tools

    async def _route(self, messages: tuple[ChatMessage, ...]) -> str:
        """clear → code; ambiguous → by ambiguity_action: clarify | research | code."""
        compat = self._settings.options.openai_compat
        classifier_model = self._catalog.resolve(compat.router_model) if compat.router_model else None
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
        self, lifecycle: RequestLifecycle, turn: _Turn
    ) -> tuple[AgentEvent, AsyncIterator[AgentEvent]]:
        """Answer with a question instead of running the agent (outcome clarification).

        In a session it is a run like any other: admitted (or queued behind the busy
        run) first, and its question joins the transcript when the run is released.
        """
        text = router.clarification(turn.history)
        await self._executor.execute(AppendContent(run_id=lifecycle.run_id, at=datetime.now(UTC), text=text))
        turn.result.texts.append(text)
        return TextChunk(text), _ending(Done("stop", Usage(), "clarification"))

    def _release_on_finish(
        self, lifecycle: RequestLifecycle, new_turn: tuple[ChatMessage, ...], result: TurnResult
    ) -> None:
        sessions = self._sessions

        async def release(outcome: str) -> None:
            turn = [*(message_to_dict(m) for m in new_turn), result.answer()]
            await sessions.release(lifecycle.session_id, lifecycle.request_id, outcome, turn)

        lifecycle.on_finish.append(release)


async def admit(
    sessions: SessionService,
    lifecycle: RequestLifecycle,
    model_id: str,
    new_turn: tuple[ChatMessage, ...],
    options: TurnOptions,
    earlier: tuple[ChatMessage, ...] = (),
    full_history: bool = False,
) -> Admission:
    """Run now, or queue and answer 409, or 429 when the queue is full.

    Admission and queueing are one save (the queued run's turn travels with it); a full
    queue raises SessionQueueFull (429) from the decision itself.
    """
    session_id = lifecycle.session_id
    admission = await sessions.admit(
        lifecycle,
        model_id,
        [message_to_dict(m) for m in new_turn],
        [message_to_dict(m) for m in earlier],
        {**options_to_dict(options), "full_history": full_history},
    )
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


def _check_session_id(own: str | None) -> None:
    """A session the client names must have an id the ledger and the store can carry."""
    if own is not None and not SESSION_ID.fullmatch(own):
        raise InvalidRequest(
            "X-BMO-Session-Id must be 1-128 characters of [A-Za-z0-9._:-].",
            param="X-BMO-Session-Id",
            code="invalid_session_id",
        )


def _parse_run_id(value: str) -> UUID | None:
    """Any run id the server could have issued, else None (never an exception)."""
    if len(value) > 64 or not value.isascii():
        return None
    try:
        return UUID(value)
    except ValueError:
        return None
