"""ReleaseRun: the active run ended; record its turn and activate the next queued run."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import DomainEvent

from app.commands.base import stamp
from app.commands.session_base import SessionCommand
from app.events.session import RunActivated, RunReleased, SessionState

__all__ = ["ReleaseRun", "decide"]


class ReleaseRun(SessionCommand, frozen=True, kw_only=True):
    run_id: str
    outcome: str
    turn: list[dict[str, Any]]


def decide(state: SessionState, cmd: ReleaseRun) -> tuple[DomainEvent, ...]:
    if state.active_run != cmd.run_id:  # released already (or never active): nothing to do
        return ()
    events: list[DomainEvent] = [
        RunReleased(**stamp(state, cmd.at), run_id=cmd.run_id, outcome=cmd.outcome, turn=cmd.turn)
    ]
    if state.queue:
        events.append(RunActivated(**stamp(state, cmd.at, 2), run_id=state.queue[0], requester=""))
    return tuple(events)
