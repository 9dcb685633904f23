"""CancelRun: the run stops before its end (client gone, server shutting down).

Recorded before the terminal `Finished(outcome=cancelled)`: who or what
cancelled it, and at which step of the agent loop.
"""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import Cancelled, RunState

__all__ = ["CancelRun", "decide"]


class CancelRun(RunCommand, frozen=True, kw_only=True):
    reason: str
    by: str  # client | server


def decide(state: RunState, cmd: CancelRun) -> tuple[Cancelled, ...]:
    if not state.is_open or state.cancelled:
        return ()
    return (Cancelled(**stamp(state, cmd.at), reason=cmd.reason, by=cmd.by, step=state.steps),)
