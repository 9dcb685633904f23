"""RecordModelCall: one provider call of the agent loop finished."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import ModelCalled, RunState

__all__ = ["RecordModelCall", "decide"]


class RecordModelCall(RunCommand, frozen=True, kw_only=True):
    model: str
    step: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str


def decide(state: RunState, cmd: RecordModelCall) -> tuple[ModelCalled, ...]:
    if not state.is_open:
        return ()
    return (
        ModelCalled(
            **stamp(state, cmd.at),
            model=cmd.model,
            step=cmd.step,
            prompt_tokens=cmd.prompt_tokens,
            completion_tokens=cmd.completion_tokens,
            latency_ms=round(cmd.latency_ms, 3),
            finish_reason=cmd.finish_reason,
        ),
    )
