"""Permission questions: list the pending ones (or follow them live), answer one.

A question shows the complete canonical arguments the tool will run with, a
rendering with every invisible character made visible, and their sha256
digest. An answer may name that digest; one that names another is refused
(409 `digest_mismatch`), so nothing unseen can be approved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from app.agent.approval import display_arguments
from app.agent.permissions import answer
from app.errors import Conflict, NotFound
from app.http import sse
from app.http.deps import HttpDeps
from app.http.openapi import SECURITY, Documented, errors
from app.projections import permissions

FOLLOW_POLL_S = 0.1  # a read of the local read model, not a request: no ledger row per look
FOLLOW_WINDOW_S = 15.0  # a watch ends after this (clients reconnect): a shutdown never waits longer

__all__ = ["PermissionsController", "Question", "question_view"]

Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="sha256 hex of the arguments")]


class PermissionAnswer(msgspec.Struct):
    decision: Literal["allow", "allow_session", "deny"]
    digest: Digest | None = None  # the arguments digest the decider saw
    via: Literal["http", "tui"] = "http"


class Question(msgspec.Struct):
    question_id: str
    request_id: str
    session_id: str | None
    tool: str
    call_id: str
    arguments: str  # complete canonical JSON: exactly what the tool runs with
    arguments_display: str  # the same, indented, invisible characters escaped, blank runs counted
    arguments_digest: str  # sha256 hex of tool + "\n" + arguments
    arguments_truncated: bool  # always false: nothing is ever cut
    asked_at: str
    asked_by: str | None  # the requester of the run that asks
    expires_at: str
    status: str  # pending | allowed | denied | closed
    decided_by: str | None
    decided_via: str | None
    scope: str | None  # once | session | run
    requester: str | None  # who decided
    decided_at: str | None


class QuestionList(msgspec.Struct):
    data: list[Question]


def question_view(row: dict[str, Any]) -> Question:
    fields = dict(row)
    digest = fields.pop("digest", None) or ""
    return Question(
        **fields,
        arguments_display=display_arguments(fields["arguments"]),
        arguments_digest=digest,
        arguments_truncated=False,
    )


_REFUSALS = {
    "already_decided": "it was already answered",
    "run_ended": "its run has ended",
    "digest_mismatch": "the digest does not match its arguments (they are not the ones you reviewed)",
}


class PermissionsController(Controller):
    path = "/v1/permissions"
    tags = ("permissions",)
    security = SECURITY

    @get(
        summary="Pending permission questions, oldest first",
        description="With `follow=true` the answer is instead an SSE stream that sends this list "
        "now and again whenever it changes, for 15 s, then `data: [DONE]` (an operator screen's "
        "live watch reconnects; the parameter is left out of the parameter list so that fuzzers "
        "do not hold streams open).",
        operation_class=Documented,
        responses={
            200: ResponseSpec(QuestionList, description="the pending questions", generate_examples=False),
            **errors(401, 500),
        },
    )
    async def pending(
        self,
        state: State,
        follow: Annotated[bool, Parameter(include_in_schema=False)] = False,
    ) -> Response[Any]:
        deps: HttpDeps = state.deps
        await deps.settle()
        if follow:
            return Stream(
                _follow_pending(deps), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return Response(_pending(deps), media_type="application/json")

    @post(
        "/{question_id:str}",
        status_code=200,
        summary="Answer a question: allow, allow_session or deny (optionally bound to the arguments digest)",
        operation_class=Documented,
        responses=errors(
            400,
            401,
            404,
            409,
            413,
            500,
            s404="no such question",
            s409="already answered, its run has ended, or the digest does not match",
        ),
    )
    async def decide(
        self, state: State, request: Request[Any, Any, Any], question_id: str, data: PermissionAnswer
    ) -> Question:
        deps: HttpDeps = state.deps
        await deps.settle()
        question = permissions.get_question(deps.read_conn, question_id)
        if question is None:
            raise NotFound(f"No permission question '{question_id}'.", param="question_id")
        lifecycle = request.scope.get("bmo")  # type: ignore[call-overload]
        result = await answer(
            deps.executor,
            UUID(hex=question["request_id"]),
            question_id,
            "deny" if data.decision == "deny" else "allow",
            lifecycle.requester if lifecycle is not None else "",
            via=data.via,
            digest=data.digest or "",
            session_wide=data.decision == "allow_session",
        )
        if result != "decided":
            raise Conflict(f"Question '{question_id}' cannot be answered: {_REFUSALS[result]}.", code=result)
        await deps.settle()
        fresh = permissions.get_question(deps.read_conn, question_id) or question
        return question_view(fresh)


def _pending(deps: HttpDeps) -> QuestionList:
    return QuestionList(data=[question_view(q) for q in permissions.pending_questions(deps.read_conn)])


async def _follow_pending(deps: HttpDeps) -> AsyncIterator[bytes]:
    """The pending list now, then each time it changes, for one window.

    An operator's screen learns of a new question within FOLLOW_POLL_S of the
    projector writing it, with one ledger row per window instead of one per
    poll. The window is bounded because granian drains open connections on
    shutdown: an endless stream would hold a stopping server forever.
    """
    last: list[tuple[str, str]] | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FOLLOW_WINDOW_S
    while loop.time() < deadline:
        page = _pending(deps)
        key = [(q.question_id, q.status) for q in page.data]
        if key != last:
            last = key
            yield sse.event(page)
        await asyncio.sleep(FOLLOW_POLL_S)
    yield sse.DONE
