"""Permission questions: list the pending ones, answer one (SPEC §5)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State

from app.agent.permissions import answer
from app.errors import Conflict, NotFound
from app.http.deps import HttpDeps
from app.http.openapi import SECURITY, Documented, errors
from app.projections import permissions

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
        operation_class=Documented,
        responses=errors(401, 500),
    )
    async def pending(self, state: State) -> QuestionList:
        deps: HttpDeps = state.deps
        await deps.settle()
        return QuestionList(data=[Question(**q) for q in permissions.pending_questions(deps.read_conn)])

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
