"""What every run command shares: the stream it targets and when it was issued."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from app.events.run import RunState

__all__ = ["RunCommand", "stamp"]


class RunCommand(msgspec.Struct, frozen=True, kw_only=True):
    run_id: UUID
    at: datetime  # wall-clock time of the decision; ordering never depends on it


def stamp(state: RunState, at: datetime, offset: int = 1) -> dict[str, Any]:
    """Identity fields of the `offset`-th new event after `state`."""
    return {
        "originator_id": state.run_id,
        "originator_version": state.version + offset,
        "timestamp": at,
    }
