"""Small run facts recorded as they happen: resumed, identity ignored, override applied."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import ModelOverrideApplied, RequesterIgnored, Resumed, RunState

__all__ = [
    "ApplyModelOverride",
    "IgnoreRequester",
    "MarkResumed",
    "decide_ignore",
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
