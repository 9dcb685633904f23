"""FollowClientHistory: the active run answers the client's history, and the session follows it."""

from __future__ import annotations

from typing import Any

from app.commands.base import stamp
from app.commands.session_base import SessionCommand
from app.events.session import SessionState, TranscriptReplaced

__all__ = ["FollowClientHistory", "decide"]


class FollowClientHistory(SessionCommand, frozen=True, kw_only=True):
    run_id: str
    kept: int
    dropped: int
    messages: list[dict[str, Any]]


def decide(state: SessionState, cmd: FollowClientHistory) -> tuple[TranscriptReplaced, ...]:
    """Only the session's active run may rewrite its transcript."""
    if state.active_run != cmd.run_id:
        return ()
    return (
        TranscriptReplaced(
            **stamp(state, cmd.at),
            run_id=cmd.run_id,
            kept=cmd.kept,
            dropped=cmd.dropped,
            messages=cmd.messages,
        ),
    )
