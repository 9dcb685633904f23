"""Permission questions: list the pending ones (or follow them live), answer one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from app.agent.permissions import answer
from app.errors import Conflict, NotFound
from app.http import sse
from app.http.deps import HttpDeps
from app.http.openapi import SECURITY, Documented, errors
from app.projections import permissions

FOLLOW_POLL_S = 0.1  # a read of the local read model, not a request: no ledger row per look
FOLLOW_WINDOW_S = 15.0  # a watch ends after this (clients reconnect): a shutdown never waits longer

__all__ = ["PermissionsController"]


class PermissionAnswer(msgspec.Struct):
    decision: Literal["allow", "deny"]


class Question(msgspec.Struct):
    question_id: str
    request_id: str
    tool: str
    call_id: str
    arguments: str
    asked_at: str
    expires_at: str
    status: str  # pending | allowed | denied | closed
    decided_by: str | None
    requester: str | None
    decided_at: str | None


class QuestionList(msgspec.Struct):
    data: list[Question]


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
        summary="Answer a question: allow or deny",
        operation_class=Documented,
        responses=errors(
            400,
            401,
            404,
            409,
            413,
            500,
            s404="no such question",
            s409="already answered, or its run has ended",
        ),
    )
    async def decide(self, state: State, question_id: str, data: PermissionAnswer) -> Question:
        deps: HttpDeps = state.deps
        await deps.settle()
        question = permissions.get_question(deps.read_conn, question_id)
        if question is None:
            raise NotFound(f"No permission question '{question_id}'.", param="question_id")
        result = await answer(deps.executor, UUID(hex=question["request_id"]), question_id, data.decision)
        if result != "decided":
            status = "it was already answered" if result == "already_decided" else "its run has ended"
            raise Conflict(f"Question '{question_id}' cannot be answered: {status}.", code=result)
        await deps.settle()
        fresh = permissions.get_question(deps.read_conn, question_id) or question
        return Question(**fresh)


def _pending(deps: HttpDeps) -> QuestionList:
    return QuestionList(data=[Question(**q) for q in permissions.pending_questions(deps.read_conn)])


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
