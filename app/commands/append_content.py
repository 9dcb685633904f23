"""AppendContent: a batch of streamed text (never one event per token)."""

from __future__ import annotations

from app.commands.base import RunCommand, stamp
from app.events.run import ContentAppended, RunState

__all__ = ["AppendContent", "decide"]


class AppendContent(RunCommand, frozen=True, kw_only=True):
    text: str
    role: str = "assistant"


def decide(state: RunState, cmd: AppendContent) -> tuple[ContentAppended, ...]:
    if not state.is_open or not cmd.text:
        return ()
    return (ContentAppended(**stamp(state, cmd.at), text=cmd.text, role=cmd.role),)
