"""DecidePermission: allow or deny a pending question (operator, timeout or run end)."""

from __future__ import annotations

from typing import Literal

from app.commands.base import RunCommand, stamp
from app.events.run import PermissionDecided, RunState

__all__ = ["DecidePermission", "decide", "digest_matches"]


class DecidePermission(RunCommand, frozen=True, kw_only=True):
    question_id: str
    decision: Literal["allow", "deny"]
    decided_by: str
    requester: str = ""
    decided_via: str = ""  # link | http | tui | timeout | run_ended
    digest: str = ""  # the digest the decider saw; "" = the question's own
    scope: Literal["once", "session", "run"] = "once"


def digest_matches(state: RunState, cmd: DecidePermission) -> bool:
    return not cmd.digest or state.question_digests.get(cmd.question_id, "") == cmd.digest


def _scope(state: RunState, cmd: DecidePermission) -> str:
    """How far an allow reaches: "session" means this run when the run has no session."""
    if cmd.decision != "allow" or cmd.scope == "once":
        return "once"
    return "session" if state.session_id else "run"


def decide(state: RunState, cmd: DecidePermission) -> tuple[PermissionDecided, ...]:
    """Only a pending question can be decided; the first answer wins; a decision about other
    arguments than the question's (a digest mismatch) decides nothing."""
    if cmd.question_id not in state.open_questions or not digest_matches(state, cmd):
        return ()
    return (
        PermissionDecided(
            **stamp(state, cmd.at),
            question_id=cmd.question_id,
            decision=cmd.decision,
            decided_by=cmd.decided_by,
            requester=cmd.requester,
            decided_via=cmd.decided_via,
            digest=state.question_digests.get(cmd.question_id, ""),
            scope=_scope(state, cmd),
        ),
    )
