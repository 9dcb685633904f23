"""Wire messages to the agent's messages (content parts flattened to text)."""

from __future__ import annotations

from app.errors import InvalidRequest
from app.http.wire import ChatCompletionRequest, WireMessage
from app.providers.base import ChatMessage, ToolCall, ToolSchema

__all__ = ["client_tools", "to_chat_messages", "validate_request"]


def validate_request(body: ChatCompletionRequest) -> None:
    if body.n is not None and body.n > 1:
        raise InvalidRequest("Only n = 1 is supported.", param="n", code="unsupported_value")
    call_ids: set[str] = set()  # of the assistant messages so far: a result must follow its call
    for index, message in enumerate(body.messages):
        if message.role == "assistant":
            call_ids.update(call.id for call in message.tool_calls or ())
        elif message.role == "tool" and message.tool_call_id not in call_ids:
            raise InvalidRequest(
                "A tool message must answer a tool call of an earlier assistant message.",
                param=f"messages[{index}].tool_call_id",
            )


def client_tools(body: ChatCompletionRequest) -> tuple[tuple[ToolSchema, ...], tuple[str, ...]]:
    """The client's OpenAI function definitions, and a note for each entry that is not one.

    Only `{"type": "function", "function": {"name": ...}}` is a tool the model can be
    offered; any other entry (hosted tools such as `web_search_preview`, the flat
    Responses-API shape, junk) is dropped, never a 400.
    """
    tools: list[ToolSchema] = []
    ignored: list[str] = []
    for index, item in enumerate(body.tools or ()):
        function = item.get("function") if isinstance(item, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if (
            not isinstance(name, str)
            or not name
            or (isinstance(item, dict) and item.get("type", "function") != "function")
        ):
            ignored.append(f"tools[{index}]: {_describe(item)}")
            continue
        parameters = function.get("parameters")  # type: ignore[union-attr]
        tools.append(
            ToolSchema(
                name=name,
                description=str(function.get("description") or ""),  # type: ignore[union-attr]
                parameters=parameters if isinstance(parameters, dict) else {"type": "object"},
            )
        )
    return tuple(tools), tuple(ignored)


def _describe(item: object) -> str:
    if isinstance(item, dict):
        kind = item.get("type")
        shown = kind[:64] if isinstance(kind, str) else "(no type)"
        return f"type {shown!r} is not a function definition"
    return f"a {type(item).__name__} is not a tool definition"


def to_chat_messages(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    return tuple(_convert(m) for m in body.messages)


def _convert(message: WireMessage) -> ChatMessage:
    role = "system" if message.role == "developer" else message.role
    if role == "function":
        role = "tool"
    calls = tuple(
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in message.tool_calls or ()
    )
    return ChatMessage(
        role=role,
        content=_text(message.content),
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def _text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:  # type: ignore[attr-defined]
        if part.type == "text" and part.text:
            parts.append(part.text)
        elif part.type == "image_url":
            parts.append("[image]")
    return "\n".join(parts)
