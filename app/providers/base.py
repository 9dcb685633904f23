"""The provider contract: every upstream model adapter speaks this.

A provider turns a `ModelRequest` into an async stream of `ModelEvent`s. Tool
calls arrive whole (adapters merge streamed fragments by index before
yielding), text arrives as deltas, and every stream ends with exactly one
`ModelFinished` carrying the finish reason and the usage of that one call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

__all__ = [
    "ChatMessage",
    "ChatProvider",
    "ModelEvent",
    "ModelFinished",
    "ModelRequest",
    "TextDelta",
    "ToolCall",
    "ToolCallRequested",
    "ToolSchema",
    "Usage",
]


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # system | user | assistant | tool
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSchema(msgspec.Struct, frozen=True):
    """A function the model may call (OpenAI function-definition shape)."""

    name: str
    description: str
    parameters: dict[str, object]


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


class ModelRequest(msgspec.Struct, frozen=True):
    model: str  # the part after "<provider>/"
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSchema, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = True  # a hint: adapters may call upstream without streaming when False


class TextDelta(msgspec.Struct, frozen=True, tag=True):
    text: str


class ToolCallRequested(msgspec.Struct, frozen=True, tag=True):
    call: ToolCall


class ModelFinished(msgspec.Struct, frozen=True, tag=True):
    finish_reason: str  # stop | tool_calls | length
    usage: Usage


ModelEvent = TextDelta | ToolCallRequested | ModelFinished


class ChatProvider(Protocol):
    """One upstream (or the offline local model)."""

    name: str

    def models(self) -> tuple[str, ...]:
        """Model names this provider serves (without the provider prefix)."""
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Run one model call; the last event is always `ModelFinished`."""
        ...

    async def aclose(self) -> None: ...
