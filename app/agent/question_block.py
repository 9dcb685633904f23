"""The permission question as the person in the chat sees it, and the one line that answers it.

Rendered when a stream is written or replayed, from `PermissionAsked` and
`PermissionDecided`, so the capability links in the block are never stored.
Plain Markdown: Open WebUI renders the bold title, the fenced arguments and the
links; other clients show readable text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from app.agent.approval import display_arguments
from app.agent.review_links import ReviewLinks
from app.events.run import PermissionAsked, PermissionDecided

__all__ = ["QuestionView", "decision_line", "who"]

_BACKTICKS = re.compile(r"`+")


def who(requester: str) -> str:
    """A short name from a requester label (JSON of user/email/name), else "the operator"."""
    try:
        fields = json.loads(requester) if requester else {}
    except ValueError:
        return requester[:64] or "the operator"
    if not isinstance(fields, dict):
        return "the operator"
    return str(fields.get("user") or fields.get("email") or fields.get("name") or "the operator")


def _expiry(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _fenced(text: str) -> str:
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}json\n{text}\n{fence}"


def decision_line(
    decision: str, decided_by: str, decided_via: str, requester: str, scope: str, timeout_s: float
) -> str:
    if decided_by == "timeout":
        return f"\n\n⛔ Denied: timed out after {timeout_s:g} s.\n\n"
    if decided_by == "run_ended":
        return "\n\n⛔ Not run: the run ended before an answer.\n\n"
    via = f" ({decided_via})" if decided_via else ""
    if decision == "allow":
        reach = {"session": " for the rest of this session", "run": " for the rest of this run"}.get(
            scope, ""
        )
        return f"\n\n✅ Allowed{reach} by {who(requester)}{via}.\n\n"
    return f"\n\n⛔ Denied by {who(requester)}{via}.\n\n"


@dataclass(frozen=True, slots=True)
class QuestionView:
    links: ReviewLinks | None
    timeout_s: float

    def block(self, asked: PermissionAsked, now: datetime | None = None) -> str:
        """Tool, complete arguments, time left and where to answer."""
        now = now or datetime.now(UTC)
        expires = _expiry(asked.expires_at)
        left = max(0, int((expires - now).total_seconds())) if expires else int(self.timeout_s)
        until = f", until {expires:%H:%M:%S} UTC" if expires else ""
        title = f"**⏸ Permission needed: `{asked.tool}`** — answer within {left} s{until}."
        links = (
            self.links.for_question(asked.question_id, asked.digest, expires)
            if self.links and expires
            else None
        )
        if links:
            where = f"[Review and allow]({links[0]}) · [Deny]({links[1]})"
        else:
            where = (
                f"Answer in `bmo tui` → `/questions`, or `POST /v1/permissions/{asked.question_id}` "
                'with `{"decision": "allow"}` or `{"decision": "deny"}`.'
            )
        digest = f"Question `{asked.question_id[:12]}`, arguments sha256 `{asked.digest[:16]}…`"
        return f"\n\n{title}\n\n{_fenced(display_arguments(asked.arguments))}\n\n{where}\n\n{digest}\n\n"

    def decided(self, event: PermissionDecided) -> str:
        return decision_line(
            event.decision, event.decided_by, event.decided_via, event.requester, event.scope, self.timeout_s
        )
