"""RecordToolCall: one tool call of the agent loop finished."""

from __future__ import annotations

import hashlib

from app.commands.base import RunCommand, stamp
from app.events.run import RunState, ToolCalled

__all__ = ["RecordToolCall", "args_digest", "decide"]


def args_digest(arguments: str) -> str:
    """Arguments may hold secrets or whole files: the ledger keeps a digest."""
    return "sha256:" + hashlib.sha256(arguments.encode()).hexdigest()[:16]


class RecordToolCall(RunCommand, frozen=True, kw_only=True):
    name: str
    call_id: str
    arguments: str
    ok: bool
    duration_ms: float
    step: int


def decide(state: RunState, cmd: RecordToolCall) -> tuple[ToolCalled, ...]:
    if not state.is_open:
        return ()
    return (
        ToolCalled(
            **stamp(state, cmd.at),
            name=cmd.name,
            call_id=cmd.call_id,
            args_digest=args_digest(cmd.arguments),
            ok=cmd.ok,
            duration_ms=round(cmd.duration_ms, 3),
            step=cmd.step,
        ),
    )
