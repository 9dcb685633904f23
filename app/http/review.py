"""The review page behind a question block's links: `GET/POST /review/{question_id}`.

No bearer token: the link carries a capability token (app.agent.review_links)
bound to this question, the digest of its arguments and its expiry. GET only
shows the question; the buttons POST, and the POST that decides uses the token
up (a question is decided once). Every refusal is a page that says why, never
a 500. Works without JavaScript.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from app.agent.approval import display_arguments
from app.agent.permissions import answer
from app.agent.review_links import verify
from app.http.deps import HttpDeps
from app.projections import permissions

__all__ = ["SECURITY_HEADERS", "ReviewController"]

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token never leaks to another site
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}

_REFUSED_TOKEN = {
    "invalid": (
        403,
        "This link is not valid for this question",
        "Open the link from the chat exactly as shown.",
    ),
    "expired": (410, "This link has expired", "The question's time ran out; it was denied."),
    "missing": (403, "This link has no token", "Open the link from the chat exactly as shown."),
}
_DONE = {
    "allow": "Allowed once. The tool runs now; go back to the chat.",
    "allow_session": "Allowed for the rest of this session. The tool runs now; go back to the chat.",
    "deny": "Denied. The agent was told it may not run this; go back to the chat.",
}
_NOT_DECIDED = {
    "already_decided": "This question was already answered: a link decides once.",
    "run_ended": "The run that asked has ended; there is nothing left to decide.",
    "digest_mismatch": "The arguments are not the ones this link was made for; nothing was decided.",
}


def _page(status: int, title: str, message: str = "", tone: str = "", **context: Any) -> Template:
    context = {"title": title, "message": message, "tone": tone, "question": None, **context}
    return Template("review.html", context=context, status_code=status, headers=SECURITY_HEADERS)


def _seconds_left(expires_at: str, now: datetime) -> int | None:
    try:
        expires = datetime.fromisoformat(expires_at)
    except ValueError:
        return None
    return max(0, int((expires - now).total_seconds()))


def _check(deps: HttpDeps, question_id: str, token: str) -> tuple[dict[str, Any] | None, Template | None]:
    """The question if the token is good for it now, else the page that says why not."""
    question = permissions.get_question(deps.read_conn, question_id)
    if question is None:
        return None, _page(404, "No such question", "There is no permission question with this id.", "bad")
    links = deps.turns.questions.links
    if not token or links is None:
        status, title, text = _REFUSED_TOKEN["missing"]
        return None, _page(status, title, text, "bad")
    why = verify(links.secret, token, question_id, question["digest"] or "", datetime.now(UTC))
    if why is not None:
        status, title, text = _REFUSED_TOKEN[why]
        return None, _page(status, title, text, "bad")
    return question, None


def _question_page(question: dict[str, Any], token: str, *, prefer_deny: bool, status: int = 200) -> Template:
    pending = question["status"] == "pending"
    return _page(
        status,
        f"Permission needed: {question['tool']}" if pending else f"Question {question['status']}",
        "" if pending else f"This question is {question['status']}; there is nothing left to decide.",
        "" if pending else "good",
        question=question,
        display=display_arguments(question["arguments"]),
        seconds_left=_seconds_left(question["expires_at"], datetime.now(UTC)),
        can_decide=pending,
        prefer_deny=prefer_deny,
        token=token,
        action_url=f"/review/{question['question_id']}",
    )


class ReviewController(Controller):
    path = "/review"
    include_in_schema = False

    @get("/{question_id:str}", name="permission_review")
    async def show(self, state: State, question_id: str, token: str = "", action: str = "") -> Template:
        """Shows the question and its complete arguments; never decides anything."""
        deps: HttpDeps = state.deps
        await deps.settle()
        question, refused = _check(deps, question_id, token)
        if refused is not None:
            return refused
        assert question is not None
        return _question_page(question, token, prefer_deny=action == "deny")

    @post("/{question_id:str}", status_code=200)
    async def decide(
        self,
        state: State,
        request: Request[Any, Any, Any],
        question_id: str,
        data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED),  # noqa: B008
    ) -> Template:
        """Decides with the button pressed, bound to the token's question and digest."""
        deps: HttpDeps = state.deps
        await deps.settle()
        token = str(data.get("token", ""))
        question, refused = _check(deps, question_id, token)
        if refused is not None:
            return refused
        assert question is not None
        decision = str(data.get("decision", ""))
        if decision not in _DONE:
            return _page(400, "Choose a button", "Use Allow once, Allow for the session, or Deny.", "bad")
        if data.get("digest") and data.get("digest") != question["digest"]:
            return _page(409, "Nothing was decided", _NOT_DECIDED["digest_mismatch"], "bad")
        lifecycle = request.scope.get("bmo")  # type: ignore[call-overload]
        result = await answer(
            deps.executor,
            UUID(hex=question["request_id"]),
            question_id,
            "deny" if decision == "deny" else "allow",
            lifecycle.requester if lifecycle is not None else "",
            via="link",
            digest=question["digest"] or "",
            session_wide=decision == "allow_session",
        )
        if result != "decided":
            return _page(409, "Nothing was decided", _NOT_DECIDED[result], "bad")
        await deps.settle()
        fresh = permissions.get_question(deps.read_conn, question_id) or question
        page = _question_page(fresh, "", prefer_deny=False)
        page.context.update(title="Decided", message=_DONE[decision], tone="good")
        return page
