"""NoteTurn: a turn answered without a run (a clarification) joins the transcript."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import DomainEvent

from app.commands.session_base import SessionCommand, opening, stamp_session
from app.events.session import SessionState, TurnNoted

__all__ = ["NoteTurn", "decide"]


class NoteTurn(SessionCommand, frozen=True, kw_only=True):
    session_id: str
    model: str
    requester: str
    turn: list[dict[str, Any]]


def decide(state: SessionState, cmd: NoteTurn) -> tuple[DomainEvent, ...]:
    events: list[DomainEvent] = [*opening(state, cmd.at, cmd.session_id, cmd.model, cmd.requester)]
    events.append(TurnNoted(**stamp_session(state, cmd.at, len(events) + 1), turn=cmd.turn))
    return tuple(events)
