"""DecidePermission: allow or deny a pending question (operator, timeout or run end)."""

from __future__ import annotations

from typing import Literal

from app.commands.base import RunCommand, stamp
from app.events.run import PermissionDecided, RunState

__all__ = ["DecidePermission", "decide"]


class DecidePermission(RunCommand, frozen=True, kw_only=True):
    question_id: str
    decision: Literal["allow", "deny"]
    decided_by: str
    requester: str = ""


def decide(state: RunState, cmd: DecidePermission) -> tuple[PermissionDecided, ...]:
    """Only a pending question of an open run can be decided; the first answer wins.

    A question cannot outlive its run: nothing is appended after `Finished`.
    """
    if not state.is_open or cmd.question_id not in state.open_questions:
        return ()
    return (
        PermissionDecided(
            **stamp(state, cmd.at),
            question_id=cmd.question_id,
            decision=cmd.decision,
            decided_by=cmd.decided_by,
            requester=cmd.requester,
        ),
    )
