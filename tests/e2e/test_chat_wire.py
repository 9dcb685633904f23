"""The chat surface on the wire: the official SDK and raw SSE framing."""

from __future__ import annotations

import json

import httpx
import openai

from tests.e2e.server import BmoServer


def test_models_list_advertises_the_local_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["bmo/local"]
    assert models.data[0].object == "model"
    assert models.data[0].owned_by == "bmo"
    assert isinstance(models.data[0].created, int)


def test_non_streaming_chat_answers_through_the_real_tools(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="bmo/local", messages=[{"role": "user", "content": "read README.md"}]
    )
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert "TODO: write docs" in (choice.message.content or "")  # came from the file
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.completion_tokens > 0


def test_streaming_chat_with_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="bmo/local",
        messages=[{"role": "user", "content": "list files in src"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "main.py" in text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_sse_framing_is_what_open_webui_parses(server: BmoServer, http: httpx.Client) -> None:
    body = {
        "model": "bmo/local",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "search for TODO"}],
        "tools": [{"type": "function", "function": {"name": "x", "parameters": {}}}],
        "seed": 7,
        "reasoning_effort": "low",
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        assert response.headers["x-request-id"]
        raw = response.read().decode()
    events = [block for block in raw.split("\n\n") if block]
    assert all(block.startswith("data: ") and "\n" not in block for block in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(block[len("data: ") :]) for block in events[:-1]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert "README.md" in text and "src/main.py" in text


def test_stream_without_include_usage_has_no_usage_chunk(http: httpx.Client) -> None:
    body = {"model": "bmo/local", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    raw = http.post("/v1/chat/completions", json=body).text
    payloads = [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    assert all(p["choices"] for p in payloads)
    assert raw.endswith("data: [DONE]\n\n")


def test_content_parts_and_tool_round_trip_messages_are_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="bmo/local",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
        ],
    )
    assert "README.md" in (completion.choices[0].message.content or "")


def test_default_model_is_used_when_the_request_names_none(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}]})
    assert response.status_code == 200
    assert response.json()["model"] == "bmo/local"


def test_openapi_documents_every_route_with_real_schemas(http: httpx.Client) -> None:
    doc = http.get("/schema/openapi.json").json()
    paths = doc["paths"]
    for path in (
        "/v1/chat/completions",
        "/v1/models",
        "/v1/openai-compat/posture",
        "/v1/openai-compat/runs",
        "/v1/openai-compat/runs/{run_id}/events",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    assert "200" in chat["responses"] and "201" not in chat["responses"]
    schemas = doc["components"]["schemas"]
    assert {"ChatCompletionRequest", "ChatCompletion", "ModelList", "Posture", "RunsPage"} <= set(schemas)
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
