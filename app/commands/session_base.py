"""What every session command shares: the session stream it targets."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from app.commands.base import stamp
from app.events.session import SessionOpened, SessionState

__all__ = ["SessionCommand", "opening"]


class SessionCommand(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: UUID  # session_uuid(session id)
    at: datetime


def opening(
    state: SessionState, at: datetime, session_id: str, model: str, requester: str
) -> list[SessionOpened]:
    """The SessionOpened event a first command on a session starts with (none once opened)."""
    if state.opened:
        return []
    return [SessionOpened(**stamp(state, at), session_id=session_id, model=model, requester=requester)]
