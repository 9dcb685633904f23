"""AskPermission: a mutating tool call waits for an operator's answer."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import PermissionAsked, RunState

__all__ = ["ARGUMENTS_PREVIEW", "AskPermission", "decide"]

ARGUMENTS_PREVIEW = 2000  # characters of the arguments the operator sees


class AskPermission(RunCommand, frozen=True, kw_only=True):
    question_id: str
    tool: str
    call_id: str
    arguments: str
    expires_at: str


def decide(state: RunState, cmd: AskPermission) -> tuple[PermissionAsked, ...]:
    if not state.is_open or cmd.question_id in state.open_questions | state.decided_questions:
        return ()
    return (
        PermissionAsked(
            **stamp(state, cmd.at),
            question_id=cmd.question_id,
            tool=cmd.tool,
            call_id=cmd.call_id,
            arguments=cmd.arguments[:ARGUMENTS_PREVIEW],
            expires_at=cmd.expires_at,
        ),
    )
