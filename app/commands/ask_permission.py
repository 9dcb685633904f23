"""AskPermission: a mutating tool call waits for an operator's answer."""

from __future__ import annotations

from app.agent.approval import arguments_digest
from app.commands.base import RunCommand, stamp
from app.events.run import PermissionAsked, RunState

__all__ = ["AskPermission", "decide"]


class AskPermission(RunCommand, frozen=True, kw_only=True):
    question_id: str
    tool: str
    call_id: str
    arguments: str  # canonical (app.agent.approval.canonical_arguments), complete
    expires_at: str


def decide(state: RunState, cmd: AskPermission) -> tuple[PermissionAsked, ...]:
    """The question keeps the complete arguments and their digest: consent must see what it allows."""
    if not state.is_open or cmd.question_id in state.open_questions | state.decided_questions:
        return ()
    return (
        PermissionAsked(
            **stamp(state, cmd.at),
            question_id=cmd.question_id,
            tool=cmd.tool,
            call_id=cmd.call_id,
            arguments=cmd.arguments,
            expires_at=cmd.expires_at,
            digest=arguments_digest(cmd.tool, cmd.arguments),
            session_id=state.session_id,
            requester=state.requester,
        ),
    )
