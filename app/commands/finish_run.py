"""FinishRun: the terminal action of a request. Exactly one per run."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import Finished, RunState
from app.outcomes import Outcome

__all__ = ["FinishRun", "decide"]


class FinishRun(RunCommand, frozen=True, kw_only=True):
    outcome: Outcome
    status_code: int
    elapsed_ms: float  # measured on a monotonic clock by the caller
    error: str = ""
    finish_reason: str = ""


def decide(state: RunState, cmd: FinishRun) -> tuple[Finished, ...]:
    if not state.is_open:  # the first terminal action wins
        return ()
    return (
        Finished(
            **stamp(state, cmd.at),
            outcome=cmd.outcome,
            status_code=cmd.status_code,
            elapsed_ms=round(cmd.elapsed_ms, 3),
            error=cmd.error,
            finish_reason=cmd.finish_reason,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
        ),
    )
