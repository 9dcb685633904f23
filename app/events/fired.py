"""The fields of a fired run, declared once (not an event: no topic is ever stored for it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FiredFields"]


@dataclass(frozen=True)
class FiredFields:
    """What a fired run carries, declared once.

    The `Fired` event, the `FireRun` command and the ledger's row on the wire
    (`RunRow`) all take their fields from here, so the copies cannot drift.
    """

    session_id: str
    route: str
    model: str
    stream: bool
    tool_policy: str
    ambiguity_action: str
    is_session_reuse: bool
    client_ua: str
    requester: str
    task: str
