"""QueueRun: record on a deferred run's own stream what it needs to start later."""

from __future__ import annotations

from typing import Any

from app.commands.base import RunCommand, stamp
from app.events.run import Queued, RunState

__all__ = ["QueueRun", "decide"]


class QueueRun(RunCommand, frozen=True, kw_only=True):
    session_id: str
    position: int
    by_request: str
    messages: list[dict[str, Any]]
    options: dict[str, Any]


def decide(state: RunState, cmd: QueueRun) -> tuple[Queued, ...]:
    if not state.is_open or state.queued or state.started:
        return ()
    return (
        Queued(
            **stamp(state, cmd.at),
            session_id=cmd.session_id,
            position=cmd.position,
            by_request=cmd.by_request,
            messages=cmd.messages,
            options=cmd.options,
        ),
    )
