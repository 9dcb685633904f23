"""StartRun: the agent begins work on a fired run."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import RunState, Started

__all__ = ["StartRun", "decide"]


class StartRun(RunCommand, frozen=True, kw_only=True):
    model: str
    message_count: int


def decide(state: RunState, cmd: StartRun) -> tuple[Started, ...]:
    if not state.is_open or state.started:
        return ()
    return (Started(**stamp(state, cmd.at), model=cmd.model, message_count=cmd.message_count),)
