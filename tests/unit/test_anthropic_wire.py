"""Pure Anthropic Messages-API mapping: request body, SSE decoding, stream assembly."""

from __future__ import annotations

import json

import pytest

from app.errors import ProviderError
from app.providers.anthropic_wire import (
    SseDecoder,
    SseEvent,
    StreamAssembler,
    backoff_delay,
    build_body,
    build_headers,
    decode_arguments,
    error_message,
    map_messages,
    map_stop_reason,
    messages_url,
    parse_message,
    parse_retry_after,
    scrub,
)
from app.providers.base import (
    ChatMessage,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSchema,
    Usage,
)


def sse(kind: str, **data: object) -> SseEvent:
    return SseEvent(kind, json.dumps({"type": kind, **data}))


# --- request ---------------------------------------------------------------


def test_messages_url_defaults_and_accepts_v1_suffix() -> None:
    assert messages_url("") == "https://api.anthropic.com/v1/messages"
    assert messages_url("http://h:1") == "http://h:1/v1/messages"
    assert messages_url("http://h:1/") == "http://h:1/v1/messages"
    assert messages_url("http://h:1/v1") == "http://h:1/v1/messages"
    assert messages_url("http://h:1/v1/") == "http://h:1/v1/messages"


def test_headers_carry_key_and_version() -> None:
    assert build_headers("sk-x") == {
        "x-api-key": "sk-x",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert "x-api-key" not in build_headers("")


def test_system_messages_become_top_level_system_joined() -> None:
    system, wire = map_messages(
        [
            ChatMessage("system", "be brief"),
            ChatMessage("user", "hi"),
            ChatMessage("system", "use tools"),
        ]
    )
    assert system == "be brief\n\nuse tools"
    assert wire == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_consecutive_same_role_messages_merge() -> None:
    _, wire = map_messages(
        [
            ChatMessage("user", "a"),
            ChatMessage("user", "b"),
            ChatMessage("assistant", "c"),
            ChatMessage("assistant", ""),
            ChatMessage("assistant", "d"),
        ]
    )
    assert [m["role"] for m in wire] == ["user", "assistant"]
    assert wire[0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert wire[1]["content"] == [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]


def test_tool_calls_and_results_map_to_tool_use_and_tool_result() -> None:
    _, wire = map_messages(
        [
            ChatMessage("user", "read it"),
            ChatMessage(
                "assistant",
                "sure",
                tool_calls=(
                    ToolCall("tu_1", "read_file", '{"path": "a.py"}'),
                    ToolCall("tu_2", "list_dir", "not json"),
                ),
            ),
            ChatMessage("tool", "print(1)", tool_call_id="tu_1"),
            ChatMessage("tool", "a.py", tool_call_id="tu_2"),
            ChatMessage("user", "thanks"),
        ]
    )
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    assert wire[1]["content"] == [
        {"type": "text", "text": "sure"},
        {"type": "tool_use", "id": "tu_1", "name": "read_file", "input": {"path": "a.py"}},
        {"type": "tool_use", "id": "tu_2", "name": "list_dir", "input": {}},
    ]
    assert wire[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "tu_1", "content": "print(1)"},
        {"type": "tool_result", "tool_use_id": "tu_2", "content": "a.py"},
        {"type": "text", "text": "thanks"},
    ]


def test_decode_arguments_falls_back_to_empty_object() -> None:
    assert decode_arguments('{"a": 1}') == {"a": 1}
    assert decode_arguments("") == {}
    assert decode_arguments("[1, 2]") == {}
    assert decode_arguments("{broken") == {}


def test_build_body_defaults_and_options() -> None:
    request = ModelRequest(model="claude-x", messages=(ChatMessage("user", "hi"),))
    body = build_body(request)
    assert body == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
    }
    tool = ToolSchema(
        "read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}}
    )
    request = ModelRequest(
        model="claude-x",
        messages=(ChatMessage("system", "sys"), ChatMessage("user", "hi")),
        tools=(tool, ToolSchema("noop", "Nothing", {})),
        max_tokens=100,
        temperature=0.2,
        stream=False,
    )
    body = build_body(request)
    assert body["system"] == "sys"
    assert body["max_tokens"] == 100
    assert body["temperature"] == 0.2
    assert body["stream"] is False
    assert body["tools"] == [
        {"name": "read_file", "description": "Read a file", "input_schema": tool.parameters},
        {"name": "noop", "description": "Nothing", "input_schema": {"type": "object", "properties": {}}},
    ]


# --- response --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_mapping(reason: str | None, expected: str) -> None:
    assert map_stop_reason(reason) == expected


def test_sse_decoder_handles_split_chunks_crlf_comments_and_multiline_data() -> None:
    decoder = SseDecoder()
    stream = (
        b": comment\r\nevent: ping\r\ndata: {}\r\n\r\n"
        + b'event: x\ndata: {"a":\ndata: 1}\n\n'
        + "event: t\ndata: \u00e9\n\n".encode()
    )
    events = []
    for i in range(len(stream)):  # one byte at a time, splitting UTF-8 sequences too
        events += decoder.feed(stream[i : i + 1])
    events += decoder.close()
    assert events == [SseEvent("ping", "{}"), SseEvent("x", '{"a":\n1}'), SseEvent("t", "\u00e9")]


def test_sse_decoder_flushes_unterminated_event_on_close() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: message_stop\ndata: {}") == []
    assert decoder.close() == [SseEvent("message_stop", "{}")]


def full_stream() -> list[SseEvent]:
    return [
        sse("message_start", message={"usage": {"input_tokens": 12, "output_tokens": 1}}),
        sse("ping"),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me "}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "look."}),
        sse("content_block_stop", index=0),
        sse("content_block_start", index=1, content_block={"type": "tool_use", "id": "tu_1", "name": "read"}),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"pa'}),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": 'th": "a"}'}),
        sse("content_block_stop", index=1),
        sse("content_block_start", index=2, content_block={"type": "tool_use", "id": "tu_2", "name": "ls"}),
        sse("content_block_stop", index=2),
        sse("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 30}),
        sse("message_stop"),
    ]


def test_stream_assembler_yields_text_then_whole_tool_calls_then_finish() -> None:
    assembler = StreamAssembler()
    events = [e for sse_event in full_stream() for e in assembler.feed(sse_event)]
    assert events == [
        TextDelta("Let me "),
        TextDelta("look."),
        ToolCallRequested(ToolCall("tu_1", "read", '{"path": "a"}')),
        ToolCallRequested(ToolCall("tu_2", "ls", "{}")),
        ModelFinished("tool_calls", Usage(12, 30)),
    ]
    assert assembler.done


def test_stream_assembler_maps_error_event_to_provider_error() -> None:
    assembler = StreamAssembler()
    with pytest.raises(ProviderError) as info:
        assembler.feed(sse("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    assert info.value.message == "Overloaded"


def test_stream_assembler_rejects_malformed_data() -> None:
    with pytest.raises(ProviderError) as info:
        StreamAssembler().feed(SseEvent("content_block_delta", "{not json"))
    assert info.value.code == "upstream_stream_broken"


def test_stream_assembler_ignores_unknown_events() -> None:
    assert StreamAssembler().feed(sse("future_event", x=1)) == []


def test_parse_message_non_stream() -> None:
    payload = {
        "content": [
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "tu_1", "name": "read", "input": {"path": "a"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    assert parse_message(payload) == [
        TextDelta("hi"),
        ToolCallRequested(ToolCall("tu_1", "read", '{"path":"a"}')),
        ModelFinished("tool_calls", Usage(3, 4)),
    ]
    with pytest.raises(ProviderError):
        parse_message({"type": "message"})


# --- errors and retries ----------------------------------------------------


def test_error_message_extraction() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}'
    assert error_message(body) == "max_tokens: too big"
    assert error_message("<html>\n Bad   Gateway </html>") == "<html> Bad Gateway </html>"
    assert error_message(b"") == ""


def test_scrub_masks_secret() -> None:
    assert scrub("bad key sk-123", "sk-123") == "bad key ***"
    assert scrub("text", "") == "text"


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert backoff_delay(0, None, 0.5, 30) == 0.5
    assert backoff_delay(3, None, 0.5, 30) == 4.0
    assert backoff_delay(10, None, 0.5, 30) == 30
    assert backoff_delay(0, 7.0, 0.5, 30) == 7.0
    assert backoff_delay(0, 700.0, 0.5, 30) == 30
