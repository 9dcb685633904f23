"""`OpenAIProvider` against a real scripted OpenAI-protocol server over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from app.config import Provider
from app.errors import BmoError, InvalidRequest, ProviderError, ProviderTimeout, RateLimited
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
from app.providers.openai import OpenAIProvider
from tests.fakes.openai_upstream import (
    BreakMidStream,
    Empty,
    Error,
    FakeOpenAI,
    Length,
    MalformedStream,
    Slow,
    Text,
    ToolCalls,
)

KEY = "sk-test-very-secret-key-0123456789"
READ_FILE = ToolSchema(
    "read_file", "read a file", {"type": "object", "properties": {"path": {"type": "string"}}}
)


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def provider_for(base_url: str, **overrides: object) -> OpenAIProvider:
    settings: dict[str, object] = {
        "type": "openai",
        "base_url": base_url,
        "api_key": KEY,
        "models": ("fake-model",),
        "timeout_s": 2.0,
        "connect_timeout_s": 2.0,
        "max_retries": 2,
    }
    settings.update(overrides)
    return OpenAIProvider("fake", Provider(**settings))  # type: ignore[arg-type]


def request(stream: bool = True, tools: tuple[ToolSchema, ...] = ()) -> ModelRequest:
    return ModelRequest("fake-model", (ChatMessage("user", "hi"),), tools=tools, max_tokens=64, stream=stream)


async def collect(provider: OpenAIProvider, req: ModelRequest) -> tuple[list[ModelEvent], BmoError | None]:
    events: list[ModelEvent] = []
    try:
        async for event in provider.stream(req):
            events.append(event)
    except BmoError as exc:
        return events, exc
    return events, None


def run(
    base_url: str, *requests: ModelRequest, **overrides: object
) -> list[tuple[list[ModelEvent], BmoError | None]]:
    """Run requests one after another on one provider (one event loop), then close it."""

    async def go() -> list[tuple[list[ModelEvent], BmoError | None]]:
        provider = provider_for(base_url, **overrides)
        try:
            return [await collect(provider, req) for req in requests]
        finally:
            await provider.aclose()

    return asyncio.run(go())


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# ---------------------------------------------------------------- answers


def test_streamed_text_and_usage(upstream: FakeOpenAI) -> None:
    upstream.script(Text("Hello there, world", usage=(12, 4), chunks=3))
    [(events, error)] = run(upstream.base_url + "/", request())
    assert error is None
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta("Hello "),
        TextDelta("there,"),
        TextDelta(" world"),
    ]
    assert events[-1] == ModelFinished("stop", Usage(12, 4))
    [seen] = upstream.requests
    assert seen["body"]["stream"] is True
    assert seen["body"]["stream_options"] == {"include_usage": True}
    assert seen["body"]["max_tokens"] == 64
    assert seen["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_non_stream(upstream: FakeOpenAI) -> None:
    upstream.script(Text("whole answer", usage=(3, 2)))
    [(events, error)] = run(upstream.base_url, request(stream=False))
    assert error is None
    assert events == [TextDelta("whole answer"), ModelFinished("stop", Usage(3, 2))]
    assert upstream.requests[0]["body"]["stream"] is False
    assert "stream_options" not in upstream.requests[0]["body"]


def test_empty_and_length(upstream: FakeOpenAI) -> None:
    upstream.script(Empty(), Length("cut off"))
    (empty, _), (length, _) = run(upstream.base_url, request(), request())
    assert empty == [ModelFinished("stop", Usage(10, 1))]
    assert text_of(length) == "cut off"
    assert length[-1] == ModelFinished("length", Usage(10, 5))


@pytest.mark.parametrize("stream", [True, False])
def test_tool_calls_are_merged(upstream: FakeOpenAI, stream: bool) -> None:
    calls = [
        ("call_1", "read_file", '{"path": "README.md"}'),
        ("call_2", "read_file", '{"path": "src/main.py"}'),
    ]
    upstream.script(ToolCalls(calls, usage=(20, 9), text="Let me look."))
    [(events, error)] = run(upstream.base_url, request(stream=stream, tools=(READ_FILE,)))
    assert error is None
    assert text_of(events) == "Let me look."
    assert [e for e in events if isinstance(e, ToolCallRequested)] == [
        ToolCallRequested(ToolCall(*calls[0])),
        ToolCallRequested(ToolCall(*calls[1])),
    ]
    assert events[-1] == ModelFinished("tool_calls", Usage(20, 9))
    tools = upstream.requests[0]["body"]["tools"]
    assert tools[0]["type"] == "function"
    assert tools[0]["function"]["name"] == "read_file"


def test_conversation_with_tool_results_is_sent_in_openai_shape(upstream: FakeOpenAI) -> None:
    call = ToolCall("call_1", "read_file", '{"path": "a"}')
    messages = (
        ChatMessage("user", "read a"),
        ChatMessage("assistant", tool_calls=(call,)),
        ChatMessage("tool", "contents of a", tool_call_id="call_1"),
    )
    run(upstream.base_url, ModelRequest("fake-model", messages))
    sent = upstream.requests[0]["body"]["messages"]
    assert sent[1]["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a"}'},
    }
    assert sent[2] == {"role": "tool", "content": "contents of a", "tool_call_id": "call_1"}


# ----------------------------------------------------------------- retries


def test_429_then_success_is_retried(upstream: FakeOpenAI) -> None:
    upstream.script(Error(429, "slow down", headers={"Retry-After": "0"}), Text("fine"))
    [(events, error)] = run(upstream.base_url, request())
    assert error is None
    assert text_of(events) == "fine"
    assert len(upstream.requests) == 2


def test_500_every_time_gives_provider_error_after_retries(upstream: FakeOpenAI) -> None:
    upstream.script(*[Error(500, "boom")] * 3)
    [(events, error)] = run(upstream.base_url, request(), max_retries=2)
    assert events == []
    assert isinstance(error, ProviderError)
    assert error.code == "upstream_error"
    assert "fake" in error.message and "boom" in error.message
    assert len(upstream.requests) == 3


def test_429_every_time_gives_rate_limited(upstream: FakeOpenAI) -> None:
    upstream.script(*[Error(429, "quota", headers={"Retry-After": "0"})] * 2)
    [(_, error)] = run(upstream.base_url, request(), max_retries=1)
    assert isinstance(error, RateLimited)
    assert error.code == "upstream_rate_limited"
    assert len(upstream.requests) == 2


def test_400_is_invalid_request_and_not_retried(upstream: FakeOpenAI) -> None:
    upstream.script(Error(400, "messages[0].content is required"))
    [(_, error)] = run(upstream.base_url, request())
    assert isinstance(error, InvalidRequest)
    assert error.code == "upstream_bad_request"
    assert "messages[0].content is required" in error.message
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_auth"), (403, "upstream_auth"), (404, "upstream_not_found")]
)
def test_auth_and_not_found(upstream: FakeOpenAI, status: int, code: str) -> None:
    upstream.script(Error(status, f"Incorrect API key provided: {KEY}"))
    [(_, error)] = run(upstream.base_url, request())
    assert isinstance(error, ProviderError)
    assert error.code == code
    assert KEY not in error.message and KEY not in str(error)
    assert len(upstream.requests) == 1


# ------------------------------------------------------- broken upstreams


def test_break_mid_stream_yields_text_then_fails_without_retry(upstream: FakeOpenAI) -> None:
    upstream.script(BreakMidStream("partial answer"))
    [(events, error)] = run(upstream.base_url, request())
    assert text_of(events) == "partial answer"
    assert not any(isinstance(e, ModelFinished) for e in events)
    assert isinstance(error, ProviderError)
    assert error.code == "upstream_stream_broken"
    assert len(upstream.requests) == 1


def test_malformed_stream_is_provider_error(upstream: FakeOpenAI) -> None:
    upstream.script(MalformedStream())
    [(events, error)] = run(upstream.base_url, request())
    assert isinstance(error, ProviderError)
    assert error.code == "upstream_stream_broken"
    assert not any(isinstance(e, ModelFinished) for e in events)


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    [(events, error)] = run(f"http://127.0.0.1:{port}/v1", request(), max_retries=1)
    assert events == []
    assert isinstance(error, ProviderError)
    assert error.code == "upstream_unreachable"
    assert "fake" in error.message and "refused" in error.message


def test_slow_upstream_times_out(upstream: FakeOpenAI) -> None:
    upstream.script(Slow(1.5, Text("too late")))
    [(events, error)] = run(upstream.base_url, request(), timeout_s=0.3)
    assert events == []
    assert isinstance(error, ProviderTimeout)
    assert "fake" in error.message
    assert len(upstream.requests) == 1


# ------------------------------------------------------- key and pooling


def test_api_key_is_sent_as_bearer(upstream: FakeOpenAI) -> None:
    run(upstream.base_url, request())
    assert upstream.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_no_authorization_header_without_key(upstream: FakeOpenAI) -> None:
    run(upstream.base_url, request(), api_key="")
    assert "authorization" not in upstream.requests[0]["headers"]


def test_one_session_and_one_connection_are_reused(upstream: FakeOpenAI) -> None:
    async def go() -> tuple[bool, bool]:
        provider = provider_for(upstream.base_url)
        try:
            await collect(provider, request())
            first = provider._session
            await collect(provider, request(stream=False))
            await collect(provider, request())
            return first is not None and provider._session is first, first is not None and first.closed
        finally:
            await provider.aclose()

    same, closed_early = asyncio.run(go())
    assert same and not closed_early
    peers = {seen["peer"] for seen in upstream.requests}
    assert len(upstream.requests) == 3
    assert len(peers) == 1, peers  # keep-alive: all three calls on one TCP connection


def test_models_lists_configured_models() -> None:
    assert provider_for("http://127.0.0.1:1/v1").models() == ("fake-model",)


def test_fake_serves_models(upstream: FakeOpenAI) -> None:
    with urllib.request.urlopen(f"{upstream.base_url}/models") as response:
        data = json.loads(response.read())
    assert [m["id"] for m in data["data"]] == ["fake-model"]
