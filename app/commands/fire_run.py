"""FireRun: a request reached a compat route; opens its run stream.

The one command that is a dataclass rather than a msgspec Struct: it carries
`FiredFields`, the declaration the `Fired` event (an eventsourcing dataclass)
is made of, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from app.commands.base import stamp
from app.events.fired import FiredFields
from app.events.run import Fired, RunState, fired_fields

__all__ = ["FireRun", "decide"]


@dataclass(frozen=True, kw_only=True)
class FireRun(FiredFields):
    run_id: UUID
    at: datetime  # wall-clock time of the decision; ordering never depends on it
    requester: str = ""
    task: str = ""


def decide(state: RunState, cmd: FireRun) -> tuple[Fired, ...]:
    if state.fired:  # a stream is fired once; repeating is a no-op
        return ()
    return (Fired(**stamp(state, cmd.at), **fired_fields(cmd)),)
