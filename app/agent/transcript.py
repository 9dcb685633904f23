"""Messages and turn options as plain JSON (what session and queue events store),
and the rule that decides which history a session's run answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.agent.turns import TurnOptions
from app.providers.base import ChatMessage, ToolCall, ToolSchema

__all__ = [
    "Divergence",
    "FollowedHistory",
    "follow_client",
    "history_for",
    "message_from_dict",
    "message_to_dict",
    "options_from_dict",
    "options_to_dict",
    "split_turn",
]


def message_to_dict(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def message_from_dict(data: dict[str, Any]) -> ChatMessage:
    calls = tuple(
        ToolCall(str(c.get("id", "")), str(c.get("name", "")), str(c.get("arguments", "")))
        for c in data.get("tool_calls") or ()
    )
    return ChatMessage(
        role=str(data.get("role", "user")),
        content=str(data.get("content") or ""),
        tool_calls=calls,
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
    )


def split_turn(messages: Sequence[ChatMessage]) -> tuple[tuple[ChatMessage, ...], tuple[ChatMessage, ...]]:
    """(earlier, new turn): the new turn is everything after the last assistant message."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    return tuple(messages[: last + 1]), tuple(messages[last + 1 :])


def history_for(
    transcript: Sequence[dict[str, Any]], earlier: Sequence[ChatMessage], new_turn: Sequence[ChatMessage]
) -> tuple[ChatMessage, ...]:
    """The history a session's run answers (see `follow_client`)."""
    return follow_client(transcript, earlier, new_turn).messages


@dataclass(frozen=True, slots=True)
class Divergence:
    kept: int  # transcript messages the client's history agreed with
    dropped: int  # transcript messages after them, replaced by the client's
    client_messages: int  # messages of the request (history and new turn)


@dataclass(frozen=True, slots=True)
class FollowedHistory:
    messages: tuple[ChatMessage, ...]
    diverged: Divergence | None = None

    def base(self, new_turn: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """The transcript the session keeps before this run's turn (when it diverged)."""
        return [message_to_dict(m) for m in self.messages[: len(self.messages) - len(new_turn)]]


# Tool activity the server streamed in the assistant's content (Open WebUI keeps it in the
# message it sends back); the transcript holds the answer without it.
_ACTIVITY = re.compile(r'<details type="tool_calls".*?</details>\n?', re.DOTALL)


def _key(message: ChatMessage | dict[str, Any]) -> tuple[str, str]:
    if isinstance(message, dict):
        message = message_from_dict(message)
    content = _ACTIVITY.sub("", message.content) if message.role == "assistant" else message.content
    return message.role, content.strip()


def follow_client(
    transcript: Sequence[dict[str, Any]],
    earlier: Sequence[ChatMessage],
    new_turn: Sequence[ChatMessage],
    *,
    full_history: bool = False,
) -> FollowedHistory:
    """Which history a run in a session answers.

    A client that sends its whole conversation (Open WebUI) gets the transcript's
    messages while they agree with it; when its history diverges (regenerate: the
    same conversation again; an edited earlier message; a branch), the session
    follows the client: the run answers exactly the client's conversation, and the
    divergence is returned so it can be recorded. A request with no assistant
    message is ambiguous: a client that keeps its history on the server sends only
    its new turn, which is appended to the transcript, unless it repeats the
    transcript's beginning (a regenerate of the first answer) or the client is
    known to send its whole conversation (`full_history`: the session came from
    its own chat-id header), in which case it diverges like any other.
    """
    past = tuple(message_from_dict(m) for m in transcript)
    if not past:
        return FollowedHistory((*earlier, *new_turn))
    client = (*earlier, *new_turn)
    theirs, ours = [_key(m) for m in client], [_key(m) for m in transcript]
    if earlier:
        if theirs[: len(earlier)] == ours:
            return FollowedHistory((*past, *new_turn))
    elif not full_history and not (len(theirs) < len(ours) and ours[: len(theirs)] == theirs):
        return FollowedHistory((*past, *new_turn))  # only the new turn was sent: append it
    kept = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b), None)
    kept = min(len(theirs), len(ours)) if kept is None else kept
    return FollowedHistory(client, Divergence(kept, len(ours) - kept, len(client)))


def options_to_dict(options: TurnOptions) -> dict[str, Any]:
    return {
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "stream": options.stream,
        "mode": options.mode,
        "client_tools": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in options.client_tools
        ],
    }


def options_from_dict(data: dict[str, Any]) -> TurnOptions:
    return TurnOptions(
        max_tokens=data.get("max_tokens"),
        temperature=data.get("temperature"),
        stream=bool(data.get("stream", True)),
        mode=str(data.get("mode", "code")),
        client_tools=tuple(
            ToolSchema(str(t["name"]), str(t.get("description", "")), dict(t.get("parameters") or {}))
            for t in data.get("client_tools") or ()
        ),
    )
