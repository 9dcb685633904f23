"""Pure mapping between bmo's provider contract and the Anthropic Messages API.

Nothing here does I/O: `build_body` turns a `ModelRequest` into the request
JSON, `SseDecoder` splits the response bytes into `(event, data)` pairs,
`StreamAssembler` turns those into `ModelEvent`s, and `parse_message` does the
same for a non-streamed response. The HTTP shell is `app.providers.anthropic`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.errors import ProviderError
from app.providers.base import (
    ChatMessage,
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSchema,
    Usage,
)

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "SseDecoder",
    "SseEvent",
    "StreamAssembler",
    "backoff_delay",
    "build_body",
    "build_headers",
    "decode_arguments",
    "error_message",
    "map_messages",
    "map_stop_reason",
    "map_tools",
    "messages_url",
    "parse_message",
    "parse_retry_after",
    "scrub",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_MAX_ERROR_CHARS = 500
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}

Block = dict[str, Any]
WireMessage = dict[str, Any]


# --- request ---------------------------------------------------------------


def messages_url(base_url: str) -> str:
    """`{base}/v1/messages`; a base that already ends in `/v1` is accepted."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        return f"{base}/messages"
    return f"{base}/v1/messages"


def build_headers(api_key: str) -> dict[str, str]:
    headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    return headers


def decode_arguments(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as an object; `{}` when invalid or not an object."""
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _blocks_for(message: ChatMessage) -> tuple[str, list[Block]]:
    """The wire role and content blocks of one non-system message."""
    if message.role == "tool":
        block: Block = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
            "content": message.content,
        }
        return "user", [block]
    blocks: list[Block] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant":
        for call in message.tool_calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": decode_arguments(call.arguments),
                }
            )
        return "assistant", blocks
    return "user", blocks


def map_messages(messages: Iterable[ChatMessage]) -> tuple[str, list[WireMessage]]:
    """System text (joined) and alternating user/assistant wire messages.

    Consecutive messages that land on the same wire role are merged, because
    the API requires strict alternation (tool results are `user` turns).
    """
    system: list[str] = []
    wire: list[WireMessage] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.content)
            continue
        role, blocks = _blocks_for(message)
        if not blocks:
            continue  # empty text blocks are rejected upstream
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    return "\n\n".join(system), wire


def map_tools(tools: Iterable[ToolSchema]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        schema = dict(tool.parameters) if tool.parameters else {}
        schema.setdefault("type", "object")
        if schema["type"] == "object":
            schema.setdefault("properties", {})
        out.append({"name": tool.name, "description": tool.description, "input_schema": schema})
    return out


def build_body(request: ModelRequest) -> dict[str, Any]:
    system, messages = map_messages(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": request.stream,
    }
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = map_tools(request.tools)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


# --- response --------------------------------------------------------------


def map_stop_reason(reason: str | None) -> str:
    """Anthropic `stop_reason` to the contract's finish reason (unknown → "stop")."""
    return _STOP_REASONS.get(reason or "", "stop")


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _broken(detail: str) -> ProviderError:
    return ProviderError(f"upstream stream broken: {detail}", code="upstream_stream_broken")


def parse_message(payload: object) -> list[ModelEvent]:
    """Events for a non-streamed Messages response: text, tool calls, then ModelFinished."""
    if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
        raise _broken("response is not a message")
    texts: list[ModelEvent] = []
    calls: list[ModelEvent] = []
    for block in payload["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and block.get("text"):
            texts.append(TextDelta(str(block["text"])))
        elif block.get("type") == "tool_use":
            arguments = msgspec.json.encode(block.get("input") or {}).decode()
            calls.append(
                ToolCallRequested(ToolCall(str(block.get("id", "")), str(block.get("name", "")), arguments))
            )
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    finished = ModelFinished(
        map_stop_reason(payload.get("stop_reason")),
        Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens"))),
    )
    return [*texts, *calls, finished]


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


@dataclass(slots=True)
class SseDecoder:
    """Incremental `text/event-stream` decoder: bytes in, complete events out."""

    _buffer: bytes = b""
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events: list[SseEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SseEvent]:
        """Flush a trailing event the stream did not terminate with a blank line."""
        events = self.feed(b"\n") if self._buffer else []
        final = self._line("")
        return [*events, final] if final is not None else events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        event = SseEvent(self._event, "\n".join(self._data)) if self._data else None
        self._event, self._data = "", []
        return event


@dataclass(slots=True)
class _ToolBlock:
    id: str
    name: str
    parts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamAssembler:
    """Folds Messages-API stream events into the provider contract.

    Text deltas are yielded as they arrive; tool calls are held until the
    message ends and yielded whole (in block order), followed by exactly one
    `ModelFinished`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    done: bool = False
    _tools: dict[int, _ToolBlock] = field(default_factory=dict)

    def feed(self, event: SseEvent) -> list[ModelEvent]:
        if self.done:
            return []
        try:
            data = msgspec.json.decode(event.data)
        except msgspec.DecodeError:
            raise _broken("malformed event data") from None
        if not isinstance(data, dict):
            raise _broken("malformed event data")
        kind = data.get("type") or event.event
        handler = getattr(self, f"_on_{kind}", None)
        return handler(data) if handler is not None else []  # unknown events are ignored

    def _on_message_start(self, data: dict[str, Any]) -> list[ModelEvent]:
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        self._usage(message.get("usage"))
        return []

    def _on_content_block_start(self, data: dict[str, Any]) -> list[ModelEvent]:
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        index = _int(data.get("index"))
        if block.get("type") == "tool_use":
            self._tools[index] = _ToolBlock(str(block.get("id", "")), str(block.get("name", "")))
            if block.get("input"):
                self._tools[index].parts.append(msgspec.json.encode(block["input"]).decode())
        elif block.get("type") == "text" and block.get("text"):
            return [TextDelta(str(block["text"]))]
        return []

    def _on_content_block_delta(self, data: dict[str, Any]) -> list[ModelEvent]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if delta.get("type") == "input_json_delta":
            tool = self._tools.get(_int(data.get("index")))
            if tool is None:
                raise _broken("input_json_delta for an unknown block")
            tool.parts.append(str(delta.get("partial_json") or ""))
        return []

    def _on_message_delta(self, data: dict[str, Any]) -> list[ModelEvent]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if delta.get("stop_reason"):
            self.stop_reason = str(delta["stop_reason"])
        self._usage(data.get("usage"))
        return []

    def _on_message_stop(self, data: dict[str, Any]) -> list[ModelEvent]:
        self.done = True
        calls: list[ModelEvent] = [
            ToolCallRequested(ToolCall(tool.id, tool.name, "".join(tool.parts) or "{}"))
            for _, tool in sorted(self._tools.items())
        ]
        usage = Usage(self.input_tokens, self.output_tokens)
        return [*calls, ModelFinished(map_stop_reason(self.stop_reason), usage)]

    def _on_error(self, data: dict[str, Any]) -> list[ModelEvent]:
        raise ProviderError(error_message(data) or "upstream reported an error", code="upstream_error")

    def _usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            self.input_tokens = _int(usage["input_tokens"])
        if "output_tokens" in usage:
            self.output_tokens = _int(usage["output_tokens"])


# --- errors and retries ----------------------------------------------------


def error_message(payload: object) -> str:
    """The `error.message` of an Anthropic error body (decoded JSON, bytes or text)."""
    if isinstance(payload, bytes | str):
        try:
            payload = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
            return " ".join(text.split())[:_MAX_ERROR_CHARS]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:_MAX_ERROR_CHARS]
        if isinstance(payload.get("message"), str):
            return payload["message"][:_MAX_ERROR_CHARS]
    return ""


def scrub(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` masked."""
    return text.replace(secret, "***") if secret else text


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `retry-after` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, retry_after: float | None, base_s: float, cap_s: float) -> float:
    """Delay before retry number `attempt` (0-based): the server's hint, else exponential."""
    if retry_after is not None:
        return min(retry_after, cap_s)
    return min(base_s * (2**attempt), cap_s)
