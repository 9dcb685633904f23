"""Messages and turn options as plain JSON (what session and queue events store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.agent.turns import TurnOptions
from app.providers.base import ChatMessage, ToolCall, ToolSchema

__all__ = [
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
    """The server transcript wins; a session the server has no turns for keeps the client's history."""
    past = tuple(message_from_dict(m) for m in transcript) if transcript else tuple(earlier)
    return (*past, *new_turn)


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
