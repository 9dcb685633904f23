"""The session stream: transcript, bound model, active run and FIFO queue.

One stream per session id (stream id = uuid5 of the id). "One run at a time
per session" is decided against this stream's version: two processes that
admit a run concurrently cannot both save (the loser reloads and queues).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import DomainEvent

__all__ = [
    "QueuedRunDropped",
    "RunActivated",
    "RunQueued",
    "RunReleased",
    "SessionOpened",
    "SessionState",
    "TranscriptReplaced",
    "TurnNoted",
    "evolve",
    "fold",
    "session_uuid",
]

_NAMESPACE = UUID("5d1f1c1e-7b0a-4c1f-9a57-0b3c6a0f6b11")


def session_uuid(session_id: str) -> UUID:
    return uuid5(_NAMESPACE, f"session:{session_id}")


@dataclass(frozen=True)
class SessionOpened(DomainEvent):
    session_id: str
    model: str  # the session is bound to the model of its first request
    requester: str


@dataclass(frozen=True)
class RunActivated(DomainEvent):
    run_id: str
    requester: str


@dataclass(frozen=True)
class RunQueued(DomainEvent):
    """A run waits for the session; it carries everything it needs to start.

    Admission and queueing are one decision: the turn, options and fired fields
    are saved with the queueing itself, so whoever activates the run later can
    start it even if its own stream was never written (older events lack them).
    """

    run_id: str
    position: int
    requester: str
    by_request: str = ""  # the request that was answered 409
    messages: list[dict[str, Any]] | None = None  # the new turn
    earlier: list[dict[str, Any]] | None = None  # the client's history before it
    options: dict[str, Any] | None = None
    fired: dict[str, Any] | None = None  # the run's Fired fields


@dataclass(frozen=True)
class TranscriptReplaced(DomainEvent):
    """The client's history diverged from the transcript: the session follows the client."""

    run_id: str
    kept: int
    dropped: int
    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class RunReleased(DomainEvent):
    """The active run ended; its turn joins the transcript."""

    run_id: str
    outcome: str
    turn: list[dict[str, Any]]


@dataclass(frozen=True)
class QueuedRunDropped(DomainEvent):
    run_id: str
    reason: str


@dataclass(frozen=True)
class TurnNoted(DomainEvent):
    """A turn answered without a run joins the transcript.

    No longer written (a clarification is now a run of its own, queued like any
    other); kept so that older session streams still fold.
    """

    turn: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SessionState:
    stream_id: UUID
    version: int = 0
    session_id: str = ""
    opened: bool = False
    model: str = ""
    active_run: str | None = None
    queue: tuple[str, ...] = ()
    transcript: tuple[dict[str, Any], ...] = ()

    @property
    def busy(self) -> bool:
        return self.active_run is not None


def evolve(state: SessionState, event: DomainEvent) -> SessionState:
    state = replace(state, version=event.originator_version)
    match event:
        case SessionOpened():
            return replace(state, opened=True, session_id=event.session_id, model=event.model)
        case RunActivated():
            queue = tuple(r for r in state.queue if r != event.run_id)
            return replace(state, active_run=event.run_id, queue=queue)
        case RunQueued():
            return replace(state, queue=(*state.queue, event.run_id))
        case RunReleased():
            return replace(state, active_run=None, transcript=(*state.transcript, *event.turn))
        case QueuedRunDropped():
            return replace(state, queue=tuple(r for r in state.queue if r != event.run_id))
        case TurnNoted():
            return replace(state, transcript=(*state.transcript, *event.turn))
        case TranscriptReplaced():
            return replace(state, transcript=tuple(event.messages))
    return state


def fold(stream_id: UUID, events: list[DomainEvent] | tuple[DomainEvent, ...]) -> SessionState:
    state = SessionState(stream_id=stream_id)
    for event in events:
        state = evolve(state, event)
    return state
