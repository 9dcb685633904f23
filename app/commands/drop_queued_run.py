"""DropQueuedRun: a waiting run will never start (its process died, or it was cancelled)."""

from __future__ import annotations

from app.commands.base import stamp
from app.commands.session_base import SessionCommand
from app.events.session import QueuedRunDropped, SessionState

__all__ = ["DropQueuedRun", "decide"]


class DropQueuedRun(SessionCommand, frozen=True, kw_only=True):
    run_id: str
    reason: str


def decide(state: SessionState, cmd: DropQueuedRun) -> tuple[QueuedRunDropped, ...]:
    if cmd.run_id not in state.queue:
        return ()
    return (QueuedRunDropped(**stamp(state, cmd.at), run_id=cmd.run_id, reason=cmd.reason),)
