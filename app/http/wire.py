"""Wire Structs: exactly what crosses HTTP. Decoded and encoded by msgspec.

Unknown request fields are accepted and ignored (Open WebUI and the SDK send
many: `tools`, `stream_options`, `reasoning_effort`, `seed`, `logit_bias` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from app.events.fired import FiredFields
from app.outcomes import Outcome

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Choice",
    "ChunkChoice",
    "ContentPart",
    "Delta",
    "DeltaToolCall",
    "ErrorBody",
    "ErrorEnvelope",
    "FunctionCall",
    "HealthStatus",
    "ModelList",
    "ModelObject",
    "ResponseMessage",
    "ResponseToolCall",
    "RunEventRow",
    "RunEventsPage",
    "RunRow",
    "RunsPage",
    "StreamOptions",
    "UsageWire",
    "WireMessage",
    "WireToolCall",
]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class FunctionCall(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class WireToolCall(msgspec.Struct):
    function: FunctionCall
    id: str = ""
    type: str = "function"
    index: int | None = None


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: Any = None


class WireMessage(msgspec.Struct):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    messages: Annotated[list[WireMessage], msgspec.Meta(min_length=1, max_length=10_000)]
    model: Annotated[str, msgspec.Meta(max_length=256)] | None = None  # bounds what records echo
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tools: list[Any] | None = None


class UsageWire(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class ResponseMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageWire


class DeltaToolCall(msgspec.Struct):
    index: int
    id: str
    function: FunctionCall
    type: str = "function"


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageWire | msgspec.UnsetType = msgspec.UNSET  # only the include_usage chunk has it


class ModelObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelObject]


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


@dataclass(frozen=True)
class _RunKey:
    request_id: str


@dataclass(frozen=True)
class RunRow(FiredFields, _RunKey):
    """A run in the ledger: its id, what it was fired with (`FiredFields`), how it ended.

    A dataclass, as the fired fields are: the same keys in the same order as ever.
    """

    started_at: str
    ended_at: str | None
    elapsed_ms: float | None
    outcome: Outcome | None
    status_code: int | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int


class RunsPage(msgspec.Struct):
    data: list[RunRow]
    next_cursor: str | None


class RunEventRow(msgspec.Struct):
    version: int
    seq: int
    type: str
    at: str
    data: dict[str, Any]


class RunEventsPage(msgspec.Struct):
    request_id: str
    data: list[RunEventRow]


class HealthStatus(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}
