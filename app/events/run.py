"""The run stream: one stream per request (stream id = request id).

Event class names and this module path are persisted with every event
(`app.events.run:Fired`): never rename them without `register_topic`.
Fields are plain JSON types only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEvent
from msgspec.structs import replace

from app.events.fired import FiredFields
from app.outcomes import Outcome

__all__ = [
    "FIRED_FIELDS",
    "TERMINAL_EVENTS",
    "Cancelled",
    "ClientToolsIgnored",
    "ContentAppended",
    "Finished",
    "Fired",
    "HistoryDiverged",
    "ModelCalled",
    "ModelOverrideApplied",
    "ModelOverrideRejected",
    "PermissionAsked",
    "PermissionDecided",
    "Queued",
    "RequesterIgnored",
    "Resumed",
    "RunEvent",
    "RunState",
    "Started",
    "ToolCalled",
    "evolve",
    "fired_fields",
    "fold",
    "run_uuid",
]


def run_uuid(request_id: str) -> UUID:
    """Request ids are UUID hex strings; the stream id is the same UUID."""
    return UUID(hex=request_id)


class Fired(FiredFields, DomainEvent):
    """A request reached a compat route (the `openai_compat.fired` record).

    Its fields are `FiredFields`, stored after the identity fields as they always were.
    """


# The one list of what a fired run carries, in order (the queued run's record and
# the ledger row are read from or checked against it).
FIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FiredFields))


def fired_fields(source: object, names: tuple[str, ...] = FIRED_FIELDS) -> dict[str, Any]:
    """The fired fields of anything that carries them by name (a FireRun, a Fired)."""
    return {name: getattr(source, name) for name in names}


@dataclass(frozen=True)
class RequesterIgnored(DomainEvent):
    """Identity headers came from a peer that is not a trusted proxy."""

    peer: str
    headers: list[str]


@dataclass(frozen=True)
class Queued(DomainEvent):
    """A deferred run waits in its session's queue, with everything it needs to start."""

    session_id: str
    position: int
    by_request: str  # the request that was answered 409
    messages: list[dict[str, Any]]  # the new turn
    options: dict[str, Any]


@dataclass(frozen=True)
class Resumed(DomainEvent):
    """This request streams another run's events (X-BMO-Resume-Run-Id)."""

    resumed_run: str


@dataclass(frozen=True)
class ModelOverrideApplied(DomainEvent):
    bound_model: str
    requested_model: str


@dataclass(frozen=True)
class ModelOverrideRejected(DomainEvent):
    bound_model: str
    requested_model: str


@dataclass(frozen=True)
class Started(DomainEvent):
    """The agent began working on the run."""

    model: str
    message_count: int


@dataclass(frozen=True)
class ModelCalled(DomainEvent):
    model: str
    step: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str


@dataclass(frozen=True)
class ToolCalled(DomainEvent):
    name: str
    call_id: str
    args_digest: str
    ok: bool
    duration_ms: float
    step: int


@dataclass(frozen=True)
class ContentAppended(DomainEvent):
    """A batch of streamed deltas; the batches concatenate to the answer."""

    text: str
    role: str  # "assistant" content, or "activity" for tool-activity blocks


@dataclass(frozen=True)
class PermissionAsked(DomainEvent):
    """A mutating tool waits for an operator's answer.

    `arguments` are the complete canonical arguments the tool will run with
    (see app.agent.approval); `digest` is sha256 over the tool and them, and a
    decision approves exactly that digest. Events recorded before digests
    existed read back with the defaults.
    """

    question_id: str
    tool: str
    call_id: str
    arguments: str
    expires_at: str
    digest: str = ""
    session_id: str = ""
    requester: str = ""


@dataclass(frozen=True)
class PermissionDecided(DomainEvent):
    """An answer to a question. The fields after `requester` came later: old events use the defaults."""

    question_id: str
    decision: str  # allow | deny
    decided_by: str  # operator | timeout | run_ended
    requester: str
    decided_via: str = ""  # link | http | tui | timeout | run_ended ("" before it was recorded)
    digest: str = ""  # the arguments digest this decision approved (or refused)
    scope: str = "once"  # once | session | run: how far an allow reaches


@dataclass(frozen=True)
class Cancelled(DomainEvent):
    """Who or what cancelled the run, and at which step; always followed by `Finished`."""

    reason: str
    by: str = ""  # client (disconnected) | server (shutting down)
    step: int = 0  # model calls the run had made when it was cancelled


@dataclass(frozen=True)
class ClientToolsIgnored(DomainEvent):
    """Entries of the request's `tools` that are not function definitions were dropped."""

    entries: list[str]


@dataclass(frozen=True)
class HistoryDiverged(DomainEvent):
    """The client's history disagreed with the session's transcript (regenerate, edit, branch).

    The run answered the client's conversation, and the session now follows it:
    `kept` transcript messages agreed, `dropped` were replaced.
    """

    kept: int
    dropped: int
    client_messages: int


@dataclass(frozen=True)
class Finished(DomainEvent):
    """Terminal: the `openai_compat.action` record of the request."""

    outcome: Outcome
    status_code: int
    elapsed_ms: float
    error: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


RunEvent = (
    Fired
    | RequesterIgnored
    | ClientToolsIgnored
    | HistoryDiverged
    | Queued
    | Resumed
    | ModelOverrideApplied
    | ModelOverrideRejected
    | Started
    | ModelCalled
    | ToolCalled
    | ContentAppended
    | PermissionAsked
    | PermissionDecided
    | Cancelled
    | Finished
)

TERMINAL_EVENTS = (Finished,)


class RunState(msgspec.Struct, frozen=True):
    """What decisions about a run need to know; folded from its events.

    A msgspec Struct: `structs.replace` is several times cheaper than
    `dataclasses.replace`, and evolve runs for every event on the hot path.
    """

    run_id: UUID
    version: int = 0
    fired: bool = False
    started: bool = False
    cancelled: bool = False
    finished: bool = False
    outcome: str = ""
    session_id: str = ""
    model: str = ""
    fired_at: datetime | None = None
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queued: bool = False
    requester: str = ""
    open_questions: frozenset[str] = frozenset()
    decided_questions: frozenset[str] = frozenset()
    question_digests: dict[str, str] = msgspec.field(default_factory=dict)  # question id -> digest

    @property
    def is_open(self) -> bool:
        return self.fired and not self.finished


def evolve(state: RunState, event: DomainEvent) -> RunState:
    """Pure: the state after `event`."""
    state = replace(state, version=event.originator_version)
    match event:
        case Fired():
            return replace(
                state,
                fired=True,
                session_id=event.session_id,
                model=event.model,
                fired_at=event.timestamp,
                requester=event.requester,
            )
        case Queued():
            return replace(state, queued=True)
        case Started():
            return replace(state, started=True, model=event.model)
        case ModelCalled():
            return replace(
                state,
                steps=state.steps + 1,
                prompt_tokens=state.prompt_tokens + event.prompt_tokens,
                completion_tokens=state.completion_tokens + event.completion_tokens,
            )
        case PermissionAsked():
            return replace(
                state,
                open_questions=state.open_questions | {event.question_id},
                question_digests={**state.question_digests, event.question_id: event.digest},
            )
        case PermissionDecided():
            return replace(
                state,
                open_questions=state.open_questions - {event.question_id},
                decided_questions=state.decided_questions | {event.question_id},
            )
        case Cancelled():
            return replace(state, cancelled=True)
        case Finished():
            return replace(state, finished=True, outcome=event.outcome)
    return state


def fold(run_id: UUID, events: list[DomainEvent] | tuple[DomainEvent, ...]) -> RunState:
    state = RunState(run_id=run_id)
    for event in events:
        state = evolve(state, event)
    return state
