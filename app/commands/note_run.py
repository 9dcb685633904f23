"""Small run facts recorded as they happen: resumed, identity ignored, override applied."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import (
    ClientToolsIgnored,
    HistoryDiverged,
    ModelOverrideApplied,
    RequesterIgnored,
    Resumed,
    RunState,
)

__all__ = [
    "ApplyModelOverride",
    "IgnoreClientTools",
    "IgnoreRequester",
    "MarkResumed",
    "NoteDivergence",
    "decide_divergence",
    "decide_ignore",
    "decide_ignore_tools",
    "decide_override",
    "decide_resumed",
]


class MarkResumed(RunCommand, frozen=True, kw_only=True):
    resumed_run: str


class IgnoreRequester(RunCommand, frozen=True, kw_only=True):
    peer: str
    headers: list[str]


class ApplyModelOverride(RunCommand, frozen=True, kw_only=True):
    bound_model: str
    requested_model: str


class IgnoreClientTools(RunCommand, frozen=True, kw_only=True):
    entries: list[str]


class NoteDivergence(RunCommand, frozen=True, kw_only=True):
    kept: int
    dropped: int
    client_messages: int


def decide_ignore_tools(state: RunState, cmd: IgnoreClientTools) -> tuple[ClientToolsIgnored, ...]:
    if not state.is_open or not cmd.entries:
        return ()
    return (ClientToolsIgnored(**stamp(state, cmd.at), entries=cmd.entries),)


def decide_divergence(state: RunState, cmd: NoteDivergence) -> tuple[HistoryDiverged, ...]:
    if not state.is_open:
        return ()
    return (
        HistoryDiverged(
            **stamp(state, cmd.at), kept=cmd.kept, dropped=cmd.dropped, client_messages=cmd.client_messages
        ),
    )


def decide_resumed(state: RunState, cmd: MarkResumed) -> tuple[Resumed, ...]:
    if not state.is_open:
        return ()
    return (Resumed(**stamp(state, cmd.at), resumed_run=cmd.resumed_run),)


def decide_ignore(state: RunState, cmd: IgnoreRequester) -> tuple[RequesterIgnored, ...]:
    if not state.is_open:
        return ()
    return (RequesterIgnored(**stamp(state, cmd.at), peer=cmd.peer, headers=cmd.headers),)


def decide_override(state: RunState, cmd: ApplyModelOverride) -> tuple[ModelOverrideApplied, ...]:
    if not state.is_open:
        return ()
    return (
        ModelOverrideApplied(
            **stamp(state, cmd.at), bound_model=cmd.bound_model, requested_model=cmd.requested_model
        ),
    )
