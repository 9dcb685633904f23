"""The OpenAI Chat Completions wire format, without any I/O.

Encoding a `ModelRequest` into the request body, splitting a server-sent-event
byte stream into `data:` payloads, decoding chunks and completions, folding
streamed tool-call fragments by index, and pulling a readable message out of
an upstream error body. `app.providers.openai` is the HTTP shell around these.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from app.providers.base import ChatMessage, ModelRequest, ToolCall, ToolSchema, Usage

__all__ = [
    "Chunk",
    "PartialCall",
    "SseDecoder",
    "StreamAccumulator",
    "ToolCallFragment",
    "WireError",
    "decode_chunk",
    "error_message",
    "error_text",
    "finish_reason",
    "merge_tool_fragments",
    "message_to_wire",
    "request_body",
    "tool_to_wire",
    "usage_of",
]

DONE = b"[DONE]"
_MAX_MESSAGE = 500


class WireError(Exception):
    """The upstream sent bytes that are not the OpenAI wire format."""


# ---------------------------------------------------------------- request body


def message_to_wire(message: ChatMessage) -> dict[str, Any]:
    """One `ChatMessage` in the OpenAI `messages[]` shape."""
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.role == "tool":
        if message.tool_call_id is not None:
            wire["tool_call_id"] = message.tool_call_id
    elif message.name:
        wire["name"] = message.name
    return wire


def tool_to_wire(tool: ToolSchema) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def request_body(request: ModelRequest) -> dict[str, Any]:
    """The JSON body of `POST /chat/completions` for this request."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [message_to_wire(m) for m in request.messages],
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = [tool_to_wire(t) for t in request.tools]
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


# ------------------------------------------------------------ response shapes


class FunctionFragment(msgspec.Struct):
    name: str | None = None
    # Some servers send a JSON object instead of JSON text; re-encoded on merge.
    arguments: str | dict[str, Any] | None = None


class ToolCallFragment(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: FunctionFragment | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCallFragment] | None = None


class Choice(msgspec.Struct):
    delta: Delta | None = None  # streamed chunks
    message: Delta | None = None  # whole completions
    finish_reason: str | None = None


class WireUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Chunk(msgspec.Struct):
    """A `chat.completion.chunk` or a whole `chat.completion` (same fields we use)."""

    choices: list[Choice] | None = None
    usage: WireUsage | None = None
    error: Any = None


def decode_chunk(payload: bytes) -> Chunk:
    try:
        return msgspec.json.decode(payload, type=Chunk)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise WireError(f"not a chat completion chunk: {_clip(payload.decode('utf-8', 'replace'))}") from exc


def usage_of(chunk: Chunk) -> Usage | None:
    if chunk.usage is None:
        return None
    return Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)


# -------------------------------------------------------------------- SSE


class SseDecoder:
    """Splits an SSE byte stream into the payloads of its `data:` lines.

    Feed it raw network chunks in any sizes; lines may be split anywhere, and
    `\\n` or `\\r\\n` both end a line. Comments, blank lines and `event:`,
    `id:`, `retry:` fields are skipped. Each `data:` line is one payload (the
    way OpenAI-compatible servers send them). After `data: [DONE]`, `done` is
    True and nothing more is returned.
    """

    def __init__(self) -> None:
        self._pending = b""
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return self._payloads(lines)

    def flush(self) -> list[bytes]:
        """The payload of a last line that had no newline (at end of stream)."""
        pending, self._pending = self._pending, b""
        return [] if self.done else self._payloads([pending])

    def _payloads(self, lines: Iterable[bytes]) -> list[bytes]:
        payloads: list[bytes] = []
        for line in lines:
            payload = sse_data(line)
            if payload is None:
                continue
            if payload.strip() == DONE:
                self.done = True
                break
            payloads.append(payload)
        return payloads


def sse_data(line: bytes) -> bytes | None:
    """The value of one `data:` line, or None for any other line."""
    line = line.rstrip(b"\r")
    if not line.startswith(b"data:"):
        return None
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


# ------------------------------------------------------- tool-call fragments


class PartialCall(msgspec.Struct):
    """A tool call being assembled from streamed fragments."""

    id: str = ""
    name: str = ""
    arguments: list[str] = msgspec.field(default_factory=list)

    def to_call(self) -> ToolCall:
        call_id = self.id or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCall(id=call_id, name=self.name, arguments="".join(self.arguments))


def merge_tool_fragments(calls: dict[int, PartialCall], fragments: Iterable[ToolCallFragment]) -> None:
    """Fold fragments into `calls`, keyed by the fragment's `index`.

    The id and name come from the first fragment that carries them (later
    repeats are ignored); arguments are concatenated in arrival order. A
    fragment without an index (some servers) starts a new call when it brings
    an id not seen yet, and continues the latest call otherwise.
    """
    for fragment in fragments:
        index = _index_of(calls, fragment)
        call = calls.setdefault(index, PartialCall())
        if fragment.id and not call.id:
            call.id = fragment.id
        function = fragment.function
        if function is None:
            continue
        if function.name and not call.name:
            call.name = function.name
        if isinstance(function.arguments, str):
            call.arguments.append(function.arguments)
        elif function.arguments is not None:
            call.arguments.append(msgspec.json.encode(function.arguments).decode())


def _index_of(calls: dict[int, PartialCall], fragment: ToolCallFragment) -> int:
    if fragment.index is not None:
        return fragment.index
    if not calls:
        return 0
    latest = max(calls)
    if fragment.id and fragment.id not in {c.id for c in calls.values()}:
        return latest + 1 if calls[latest].id else latest
    return latest


def finish_reason(reported: str | None, has_tool_calls: bool) -> str:
    """The upstream's reason, "stop" when none came, "tool_calls" when calls did."""
    reason = reported or "stop"
    return "tool_calls" if has_tool_calls and reason == "stop" else reason


class StreamAccumulator:
    """Everything of one streamed answer except the text, which passes through."""

    def __init__(self) -> None:
        self.calls: dict[int, PartialCall] = {}
        self.reported_finish: str | None = None
        self.usage = Usage()

    def add(self, chunk: Chunk) -> list[str]:
        """Fold one chunk in; returns its non-empty text deltas."""
        usage = usage_of(chunk)
        if usage is not None:
            self.usage = usage
        texts: list[str] = []
        for choice in chunk.choices or ():
            if choice.finish_reason:
                self.reported_finish = choice.finish_reason
            delta = choice.delta or choice.message
            if delta is None:
                continue
            if delta.content:
                texts.append(delta.content)
            if delta.tool_calls:
                merge_tool_fragments(self.calls, delta.tool_calls)
        return texts

    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[index].to_call() for index in sorted(self.calls)]

    def finish_reason(self) -> str:
        return finish_reason(self.reported_finish, bool(self.calls))


# ------------------------------------------------------------------ errors


def error_text(error: Any) -> str:
    """The message of an OpenAI error object (or whatever stands in for one)."""
    if isinstance(error, dict):
        for key in ("message", "error", "detail"):
            value = error.get(key)
            if isinstance(value, str | dict) and value:
                return error_text(value)
        return _clip(msgspec.json.encode(error).decode())
    if isinstance(error, str):
        return _clip(error)
    return _clip(str(error))


def error_message(body: bytes) -> str:
    """A readable message from an upstream error body: envelope, JSON or text."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded:
        return error_text(decoded)
    text = " ".join(body.decode("utf-8", "replace").split())
    return _clip(text) or "(empty response body)"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
