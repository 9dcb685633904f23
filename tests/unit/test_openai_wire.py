"""The OpenAI wire format: request bodies, SSE splitting, fragment merging, errors."""

from __future__ import annotations

import json

import pytest

from app.providers.base import ChatMessage, ModelRequest, ToolCall, ToolSchema, Usage
from app.providers.openai_wire import (
    PartialCall,
    SseDecoder,
    StreamAccumulator,
    ToolCallFragment,
    WireError,
    decode_chunk,
    error_message,
    finish_reason,
    merge_tool_fragments,
    message_to_wire,
    request_body,
    sse_data,
)

# ------------------------------------------------------------------ helpers


def fragment(
    index: int | None, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict:
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    frag: dict = {"function": function}
    if index is not None:
        frag["index"] = index
    if id is not None:
        frag["id"] = id
        frag["type"] = "function"
    return frag


def chunk(
    content: str | None = None, tool_calls: list | None = None, finish: str | None = None, usage=None
) -> bytes:
    delta: dict = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    body: dict = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    return json.dumps(body).encode()


def merged(*fragments: dict) -> list[ToolCall]:
    calls: dict[int, PartialCall] = {}
    for frag in fragments:
        merge_tool_fragments(calls, [decode_fragment(frag)])
    return [calls[i].to_call() for i in sorted(calls)]


def decode_fragment(frag: dict) -> ToolCallFragment:
    decoded = decode_chunk(chunk(tool_calls=[frag]))
    assert decoded.choices and decoded.choices[0].delta and decoded.choices[0].delta.tool_calls
    return decoded.choices[0].delta.tool_calls[0]


# --------------------------------------------------------------- SSE lines


def test_sse_data_strips_prefix_and_one_space() -> None:
    assert sse_data(b'data: {"a": 1}') == b'{"a": 1}'
    assert sse_data(b'data:{"a": 1}\r') == b'{"a": 1}'
    assert sse_data(b"data:  two spaces") == b" two spaces"


@pytest.mark.parametrize("line", [b"", b": keep-alive comment", b"event: message", b"id: 7", b"retry: 100"])
def test_sse_data_ignores_other_lines(line: bytes) -> None:
    assert sse_data(line) is None


def test_decoder_reassembles_lines_split_anywhere() -> None:
    stream = b': ping\n\nevent: x\ndata: {"n": 1}\r\n\r\ndata: {"n": 2}\n\ndata: [DONE]\n\ndata: {"n": 3}\n\n'
    for size in (1, 2, 3, 7, len(stream)):
        decoder = SseDecoder()
        payloads: list[bytes] = []
        for start in range(0, len(stream), size):
            payloads += decoder.feed(stream[start : start + size])
        payloads += decoder.flush()
        assert payloads == [b'{"n": 1}', b'{"n": 2}'], size
        assert decoder.done


def test_decoder_flushes_a_last_line_without_newline_and_reports_not_done() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"n": 1}\n\ndata: {"n": 2}') == [b'{"n": 1}']
    assert decoder.flush() == [b'{"n": 2}']
    assert not decoder.done


def test_decoder_handles_lines_longer_than_any_buffer() -> None:
    big = "x" * 300_000
    payload = json.dumps({"content": big}).encode()
    decoder = SseDecoder()
    out = decoder.feed(b"data: " + payload[:100]) + decoder.feed(payload[100:] + b"\n\n")
    assert out == [payload]


# -------------------------------------------------------- fragment merging


def test_merges_fragments_by_index_id_and_name_only_in_first() -> None:
    calls = merged(
        fragment(0, id="call_a", name="read_file", args=""),
        fragment(0, args='{"pa'),
        fragment(0, args='th": "a.txt"}'),
    )
    assert calls == [ToolCall("call_a", "read_file", '{"path": "a.txt"}')]


def test_merges_interleaved_indices_in_index_order() -> None:
    calls = merged(
        fragment(1, id="call_b", name="list_dir", args='{"pa'),
        fragment(0, id="call_a", name="read_file", args='{"path"'),
        fragment(1, args='th": "."}'),
        fragment(0, args=': "x"}'),
    )
    assert calls == [
        ToolCall("call_a", "read_file", '{"path": "x"}'),
        ToolCall("call_b", "list_dir", '{"path": "."}'),
    ]


def test_repeated_id_and_name_are_not_concatenated() -> None:
    calls = merged(
        fragment(0, id="call_a", name="bash", args='{"cmd"'),
        fragment(0, id="call_a", name="bash", args=': "ls"}'),
    )
    assert calls == [ToolCall("call_a", "bash", '{"cmd": "ls"}')]


def test_fragments_without_index_start_a_call_per_new_id() -> None:
    calls = merged(
        fragment(None, id="call_a", name="a", args="{}"),
        fragment(None, id="call_b", name="b", args='{"x"'),
        fragment(None, args=": 1}"),
    )
    assert calls == [ToolCall("call_a", "a", "{}"), ToolCall("call_b", "b", '{"x": 1}')]


def test_object_arguments_are_reencoded_and_missing_id_is_generated() -> None:
    decoded = decode_chunk(
        b'{"choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]}'
    )
    calls: dict[int, PartialCall] = {}
    assert decoded.choices and decoded.choices[0].delta and decoded.choices[0].delta.tool_calls
    merge_tool_fragments(calls, decoded.choices[0].delta.tool_calls)
    call = calls[0].to_call()
    assert json.loads(call.arguments) == {"a": 1}
    assert call.name == "f" and call.id.startswith("call_")


# ------------------------------------------------------------ accumulation


def test_accumulator_texts_usage_and_finish() -> None:
    acc = StreamAccumulator()
    texts: list[str] = []
    for payload in (
        chunk(content=""),
        chunk(content="Hel"),
        chunk(content="lo"),
        chunk(finish="length"),
        chunk(usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}),
    ):
        texts += acc.add(decode_chunk(payload))
    assert texts == ["Hel", "lo"]
    assert acc.usage == Usage(7, 3)
    assert acc.finish_reason() == "length"
    assert acc.tool_calls() == []


def test_accumulator_reports_tool_calls_when_upstream_says_stop() -> None:
    acc = StreamAccumulator()
    acc.add(decode_chunk(chunk(tool_calls=[fragment(0, id="c", name="f", args="{}")])))
    acc.add(decode_chunk(chunk(finish="stop")))
    assert acc.finish_reason() == "tool_calls"
    assert acc.usage == Usage(0, 0)


def test_accumulator_reads_a_whole_completion() -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    acc = StreamAccumulator()
    assert acc.add(decode_chunk(json.dumps(body).encode())) == []
    assert acc.tool_calls() == [ToolCall("c1", "f", "{}")]
    assert acc.usage == Usage(5, 2)


def test_finish_reason_defaults() -> None:
    assert finish_reason(None, False) == "stop"
    assert finish_reason(None, True) == "tool_calls"
    assert finish_reason("length", True) == "length"


@pytest.mark.parametrize("payload", [b"{not json", b'{"choices": [{"delta": {"content": 5}}]}', b"[1, 2]"])
def test_malformed_chunks_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_chunk(payload)


def test_in_stream_error_is_decoded() -> None:
    decoded = decode_chunk(b'{"error": {"message": "overloaded", "type": "server_error"}}')
    assert decoded.error == {"message": "overloaded", "type": "server_error"}


# ------------------------------------------------------------ request body


def test_message_conversion() -> None:
    call = ToolCall("call_1", "read_file", '{"path": "a"}')
    assert message_to_wire(ChatMessage("assistant", tool_calls=(call,))) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "a"}'},
            }
        ],
    }
    assert message_to_wire(ChatMessage("tool", "file text", tool_call_id="call_1", name="read_file")) == {
        "role": "tool",
        "content": "file text",
        "tool_call_id": "call_1",
    }
    assert message_to_wire(ChatMessage("user", "hi", name="ann")) == {
        "role": "user",
        "content": "hi",
        "name": "ann",
    }
    assert message_to_wire(ChatMessage("assistant", "thinking", tool_calls=(call,)))["content"] == "thinking"


def test_request_body_streaming_with_tools() -> None:
    tool = ToolSchema("read_file", "read a file", {"type": "object", "properties": {}})
    request = ModelRequest(
        "gpt-x", (ChatMessage("user", "hi"),), tools=(tool,), max_tokens=50, temperature=0.2
    )
    assert request_body(request) == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read_file",
                    "description": "read a file",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "max_tokens": 50,
        "temperature": 0.2,
    }


def test_request_body_non_streaming_omits_unset_options() -> None:
    body = request_body(ModelRequest("m", (ChatMessage("user", "hi"),), stream=False))
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad model", "type": "invalid_request_error"}}', "bad model"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"object": "error", "message": "vllm says no"}', "vllm says no"),
        (b'{"detail": "fastapi says no"}', "fastapi says no"),
        (b"<html>\n  Bad   Gateway\n</html>", "<html> Bad Gateway </html>"),
        (b"", "(empty response body)"),
    ],
)
def test_error_message(body: bytes, message: str) -> None:
    assert error_message(body) == message


def test_error_message_is_clipped() -> None:
    assert len(error_message(b"x" * 10_000)) == 500
