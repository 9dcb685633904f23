"""AnthropicProvider against a real scripted Messages-API server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from app.config import Provider
from app.errors import BmoError, InvalidRequest, ProviderError, ProviderTimeout, RateLimited
from app.providers.anthropic import AnthropicProvider
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
from tests.fakes.anthropic_upstream import ABreak, AError, AText, AToolUse, FakeAnthropic

KEY = "sk-ant-secret-123"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def make(base_url: str, **overrides: object) -> AnthropicProvider:
    config = Provider(type="anthropic", base_url=base_url, api_key=KEY, models=("claude-x",), **overrides)  # type: ignore[arg-type]
    return AnthropicProvider("claude", config, backoff_base_s=0.01)


def request(stream: bool = True, **kwargs: object) -> ModelRequest:
    messages = (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))
    return ModelRequest(model="claude-x", messages=messages, stream=stream, **kwargs)  # type: ignore[arg-type]


def collect(provider: AnthropicProvider, req: ModelRequest) -> list[ModelEvent]:
    async def run() -> list[ModelEvent]:
        try:
            return [event async for event in provider.stream(req)]
        finally:
            await provider.aclose()

    return asyncio.run(run())


def failure(provider: AnthropicProvider, req: ModelRequest) -> tuple[BmoError, list[ModelEvent]]:
    seen: list[ModelEvent] = []

    async def run() -> None:
        try:
            async for event in provider.stream(req):
                seen.append(event)
        finally:
            await provider.aclose()

    with pytest.raises(BmoError) as info:
        asyncio.run(run())
    assert KEY not in info.value.message
    return info.value, seen


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_streamed_text_and_usage(fake: FakeAnthropic) -> None:
    fake.script(AText("Hello there", usage=(21, 7)))
    provider = make(fake.base_url)
    assert provider.models() == ("claude-x",)
    events = collect(provider, request())
    assert sum(isinstance(e, TextDelta) for e in events) >= 2
    assert text_of(events) == "Hello there"
    assert events[-1] == ModelFinished("stop", Usage(21, 7))
    body = fake.requests[0]["body"]
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["stream"] is True
    assert body["max_tokens"] == 4096


def test_non_stream(fake: FakeAnthropic) -> None:
    fake.script(AText("whole", usage=(3, 2), stop_reason="max_tokens"))
    events = collect(make(fake.base_url + "/v1"), request(stream=False, max_tokens=9, temperature=0.5))
    assert events == [TextDelta("whole"), ModelFinished("length", Usage(3, 2))]
    body = fake.requests[0]["body"]
    assert body["stream"] is False
    assert body["max_tokens"] == 9
    assert body["temperature"] == 0.5


@pytest.mark.parametrize("stream", [True, False])
def test_tool_use_fragments_merged(fake: FakeAnthropic, stream: bool) -> None:
    args = json.dumps({"path": "src/main.py", "limit": 20})
    fake.script(AToolUse([("tu_1", "read_file", args), ("tu_2", "list_dir", "{}")], text="Checking."))
    tool = ToolSchema(
        "read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}}
    )
    events = collect(make(fake.base_url), request(stream=stream, tools=(tool,)))
    calls = [e.call for e in events if isinstance(e, ToolCallRequested)]
    assert text_of(events) == "Checking."
    assert calls[0].id == "tu_1" and calls[0].name == "read_file"
    assert json.loads(calls[0].arguments) == {"path": "src/main.py", "limit": 20}
    assert (calls[1].id, calls[1].name, json.loads(calls[1].arguments)) == ("tu_2", "list_dir", {})
    # text first, then tool calls, then exactly one finish
    kinds = [type(e).__name__ for e in events]
    assert kinds[-3:] == ["ToolCallRequested", "ToolCallRequested", "ModelFinished"]
    assert events[-1] == ModelFinished("tool_calls", Usage(10, 5))
    assert fake.requests[0]["body"]["tools"][0]["input_schema"] == tool.parameters


def test_tool_round_trip_maps_to_tool_use_and_tool_result(fake: FakeAnthropic) -> None:
    call = ToolCall("tu_1", "read_file", '{"path": "a"}')
    messages = (
        ChatMessage("user", "read a"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "contents", tool_call_id="tu_1"),
    )
    collect(make(fake.base_url), ModelRequest(model="claude-x", messages=messages))
    wire = fake.requests[0]["body"]["messages"]
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    assert wire[1]["content"] == [
        {"type": "tool_use", "id": "tu_1", "name": "read_file", "input": {"path": "a"}}
    ]
    assert wire[2]["content"] == [{"type": "tool_result", "tool_use_id": "tu_1", "content": "contents"}]


def test_429_then_success_is_retried(fake: FakeAnthropic) -> None:
    fake.script(AError(429, "slow down", {"retry-after": "0"}), AText("after retry"))
    events = collect(make(fake.base_url), request())
    assert text_of(events) == "after retry"
    assert len(fake.requests) == 2


def test_529_and_5xx_exhaust_retries(fake: FakeAnthropic) -> None:
    fake.script(*[AError(529, "Overloaded")] * 3)
    error, _ = failure(make(fake.base_url, max_retries=2), request())
    assert isinstance(error, RateLimited) and error.code == "upstream_rate_limited"
    assert len(fake.requests) == 3
    fake.script(AError(503, "down"), AError(500, "boom"))
    error, _ = failure(make(fake.base_url, max_retries=1), request())
    assert type(error) is ProviderError and error.code == "upstream_error"
    assert len(fake.requests) == 5


def test_400_not_retried_is_invalid_request(fake: FakeAnthropic) -> None:
    fake.script(AError(400, "max_tokens: must be positive"), AText("never"))
    error, _ = failure(make(fake.base_url), request())
    assert isinstance(error, InvalidRequest)
    assert error.code == "upstream_bad_request"
    assert error.message == "max_tokens: must be positive"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_auth"), (403, "upstream_auth"), (404, "upstream_not_found")]
)
def test_auth_and_not_found_mapping(fake: FakeAnthropic, status: int, code: str) -> None:
    fake.script(AError(status, f"invalid x-api-key {KEY}"))
    error, _ = failure(make(fake.base_url), request())
    assert type(error) is ProviderError and error.code == code
    assert len(fake.requests) == 1


@pytest.mark.parametrize("stream", [True, False])
def test_break_is_stream_broken_and_not_retried(fake: FakeAnthropic, stream: bool) -> None:
    fake.script(ABreak(), AText("never"))
    error, seen = failure(make(fake.base_url), request(stream=stream))
    assert type(error) is ProviderError and error.code == "upstream_stream_broken"
    assert len(fake.requests) == 1
    if stream:
        assert seen and isinstance(seen[0], TextDelta)
    assert not any(isinstance(e, ModelFinished) for e in seen)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_unreachable() -> None:
    error, _ = failure(make(f"http://127.0.0.1:{free_port()}", max_retries=1), request())
    assert type(error) is ProviderError and error.code == "upstream_unreachable"


def test_silent_upstream_times_out() -> None:
    async def run() -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda _r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        provider = make(f"http://127.0.0.1:{port}", timeout_s=0.2, max_retries=0)
        try:
            async with server:
                with pytest.raises(ProviderTimeout):
                    async for _ in provider.stream(request()):
                        pass
        finally:
            await provider.aclose()
            for writer in accepted:
                writer.close()

    asyncio.run(run())


def test_headers_carry_key_and_version_but_errors_never_do(fake: FakeAnthropic) -> None:
    fake.script(AError(401, f"invalid x-api-key: {KEY}"))
    error, _ = failure(make(fake.base_url), request())
    assert error.code == "upstream_auth" and KEY not in error.message and "***" in error.message
    headers = {k.lower(): v for k, v in fake.requests[0]["headers"].items()}
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"


def test_session_is_pooled_and_closed(fake: FakeAnthropic) -> None:
    provider = make(fake.base_url)

    async def run() -> None:
        sessions = []
        try:
            for _ in range(2):
                assert text_of([e async for e in provider.stream(request())]) == "ok"
                sessions.append(provider._session)
            assert sessions[0] is sessions[1] and sessions[0] is not None
        finally:
            await provider.aclose()
        assert provider._session is None and sessions[0].closed

    asyncio.run(run())
