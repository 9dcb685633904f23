"""What every run command shares: the stream it targets and when it was issued."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from app.events.run import RunState
from app.events.session import SessionState

__all__ = ["RunCommand", "stamp"]


class RunCommand(msgspec.Struct, frozen=True, kw_only=True):
    run_id: UUID
    at: datetime  # wall-clock time of the decision; ordering never depends on it


def stamp(state: RunState | SessionState, at: datetime, offset: int = 1) -> dict[str, Any]:
    """Identity fields of the `offset`-th new event after `state` (a run's or a session's)."""
    return {
        "originator_id": state.run_id if isinstance(state, RunState) else state.stream_id,
        "originator_version": state.version + offset,
        "timestamp": at,
    }
