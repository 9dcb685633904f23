"""CancelRun: the run stops before its end (client gone, server shutting down).

Recorded before the terminal `Finished(outcome=cancelled)`: who or what
cancelled it, and at which step of the agent loop.
"""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.commands.finish_run import close_open_questions
from app.events.run import Cancelled, PermissionDecided, RunState

__all__ = ["CancelRun", "decide"]


class CancelRun(RunCommand, frozen=True, kw_only=True):
    reason: str
    by: str  # client | server


def decide(state: RunState, cmd: CancelRun) -> tuple[PermissionDecided | Cancelled, ...]:
    """Its open questions are closed first, so `Cancelled` stays just before `Finished`."""
    if not state.is_open or state.cancelled:
        return ()
    closing = close_open_questions(state, cmd.at)
    cancelled = Cancelled(
        **stamp(state, cmd.at, len(closing) + 1), reason=cmd.reason, by=cmd.by, step=state.steps
    )
    return (*closing, cancelled)
