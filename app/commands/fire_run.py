"""FireRun: a request reached a compat route; opens its run stream."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import Fired, RunState, fired_fields

__all__ = ["FireRun", "decide"]


class FireRun(RunCommand, frozen=True, kw_only=True):
    session_id: str
    route: str
    model: str
    stream: bool
    tool_policy: str
    ambiguity_action: str
    is_session_reuse: bool
    client_ua: str
    requester: str = ""
    task: str = ""


def decide(state: RunState, cmd: FireRun) -> tuple[Fired, ...]:
    if state.fired:  # a stream is fired once; repeating is a no-op
        return ()
    return (Fired(**stamp(state, cmd.at), **fired_fields(cmd)),)
