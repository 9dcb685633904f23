"""CancelRun: the client went away; the run stops and is marked cancelled."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import Cancelled, RunState

__all__ = ["CancelRun", "decide"]


class CancelRun(RunCommand, frozen=True, kw_only=True):
    reason: str


def decide(state: RunState, cmd: CancelRun) -> tuple[Cancelled, ...]:
    if not state.is_open or state.cancelled:
        return ()
    return (Cancelled(**stamp(state, cmd.at), reason=cmd.reason),)
