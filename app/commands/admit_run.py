"""AdmitRun: a request wants to run in a session: activate it, or queue it, or refuse.

One decision, one save: when the run has to wait, everything it needs to start
(its turn, options and fired fields) is saved in the same `RunQueued` event, so
a release that activates it a moment later can always start it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.domain import DomainEvent

from app.commands.base import stamp
from app.commands.session_base import SessionCommand, opening
from app.errors import SessionQueueFull
from app.events.session import RunActivated, RunQueued, SessionState

__all__ = ["AdmitRun", "decide"]


class AdmitRun(SessionCommand, frozen=True, kw_only=True):
    session_id: str
    run_id: str  # runs now, if the session is free
    queued_run_id: str  # waits, if it is busy
    model: str
    requester: str
    max_queue_depth: int
    by_request: str = ""
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)
    earlier: list[dict[str, Any]] = msgspec.field(default_factory=list)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    fired: dict[str, Any] = msgspec.field(default_factory=dict)


def decide(state: SessionState, cmd: AdmitRun) -> tuple[DomainEvent, ...]:
    events: list[DomainEvent] = [*opening(state, cmd.at, cmd.session_id, cmd.model, cmd.requester)]
    if not state.busy:
        events.append(
            RunActivated(**stamp(state, cmd.at, len(events) + 1), run_id=cmd.run_id, requester=cmd.requester)
        )
        return tuple(events)
    if len(state.queue) >= cmd.max_queue_depth:
        raise SessionQueueFull(cmd.session_id, len(state.queue), cmd.max_queue_depth)
    return (
        RunQueued(
            **stamp(state, cmd.at),
            run_id=cmd.queued_run_id,
            position=len(state.queue) + 1,
            requester=cmd.requester,
            by_request=cmd.by_request,
            messages=cmd.messages,
            earlier=cmd.earlier,
            options=cmd.options,
            fired=cmd.fired,
        ),
    )
