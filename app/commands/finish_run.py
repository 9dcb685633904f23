"""FinishRun: the terminal action of a request. Exactly one per run."""

from __future__ import annotations

from datetime import datetime

from app.commands.base import RunCommand, stamp
from app.events.run import Finished, PermissionDecided, RunState
from app.outcomes import Outcome

__all__ = ["FinishRun", "close_open_questions", "decide"]


class FinishRun(RunCommand, frozen=True, kw_only=True):
    outcome: Outcome
    status_code: int
    elapsed_ms: float  # measured on a monotonic clock by the caller
    error: str = ""
    finish_reason: str = ""


def decide(state: RunState, cmd: FinishRun) -> tuple[PermissionDecided | Finished, ...]:
    """The terminal event, after closing the run's unanswered questions (nothing may follow `Finished`)."""
    if not state.is_open:  # the first terminal action wins
        return ()
    closing = close_open_questions(state, cmd.at)
    return (
        *closing,
        Finished(
            **stamp(state, cmd.at, len(closing) + 1),
            outcome=cmd.outcome,
            status_code=cmd.status_code,
            elapsed_ms=round(cmd.elapsed_ms, 3),
            error=cmd.error,
            finish_reason=cmd.finish_reason,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
        ),
    )


def close_open_questions(state: RunState, at: datetime) -> tuple[PermissionDecided, ...]:
    """Deny what the run still asks (`run_ended`): no question may outlive its run."""
    return tuple(
        PermissionDecided(
            **stamp(state, at, offset),
            question_id=question_id,
            decision="deny",
            decided_by="run_ended",
            requester="",
            decided_via="run_ended",
        )
        for offset, question_id in enumerate(sorted(state.open_questions), start=1)
    )
