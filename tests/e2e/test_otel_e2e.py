"""OpenTelemetry traces from a real `bmo serve` to a real OTLP/HTTP receiver (SPEC §11)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.fakes.otlp_receiver import OtlpReceiver

SERVER = 2  # OTLP span kind


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def otel_config(endpoint: str) -> str:
    return f'[options.telemetry.otel]\nenabled = true\nendpoint = "{endpoint}"\n'


def chat(server: BmoServer, *, stream: bool) -> str:
    """One chat with the offline model that reads a file; returns the X-Request-Id."""
    body = {
        "model": "bmo/local",
        "stream": stream,
        "messages": [{"role": "user", "content": "read README.md"}],
    }
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert "TODO: write docs" in response.text  # the tool really ran
    return response.headers["x-request-id"]


def trace_of(spans: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    (root,) = [
        s
        for s in spans
        if s["name"] == "openai_compat.chat_completions" and s["attributes"]["bmo.request_id"] == request_id
    ]
    return [s for s in spans if s["trace_id"] == root["trace_id"]]


def has_request(request_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    def done(spans: list[dict[str, Any]]) -> bool:
        return any(
            s["name"] == "openai_compat.chat_completions"
            and s["attributes"].get("bmo.request_id") == request_id
            for s in spans
        )

    return done


def test_each_chat_is_one_trace_with_turn_model_and_tool_spans(
    make_server: Callable[..., BmoServer], otlp: OtlpReceiver
) -> None:
    server = make_server(config_text=otel_config(otlp.endpoint))
    for stream in (False, True):
        request_id = chat(server, stream=stream)
        spans = trace_of(otlp.wait_for(has_request(request_id), timeout=15), request_id)
        by_name: dict[str, list[dict[str, Any]]] = {}
        for span in spans:
            by_name.setdefault(span["name"], []).append(span)

        (root,) = by_name["openai_compat.chat_completions"]
        attrs = root["attributes"]
        assert root["kind"] == SERVER and root["parent_span_id"] == ""
        assert attrs["bmo.request_id"] == request_id and attrs["bmo.route"] == "chat_completions"
        assert attrs["bmo.model"] == "bmo/local" and attrs["bmo.stream"] is stream
        assert attrs["bmo.outcome"] == "final_answer" and attrs["bmo.status_code"] == 200
        assert root["status"]["code"] == 0
        assert root["resource"]["service.name"] == "bmo"

        otlp.wait_for(lambda s, rid=request_id: bool(_named(s, rid, "agent.turn")), timeout=15)
        spans = trace_of(otlp.spans(), request_id)
        (turn,) = _named(spans, request_id, "agent.turn")
        assert turn["parent_span_id"] == root["span_id"]
        chats = [s for s in spans if s["name"] == "gen_ai.chat"]
        tools = [s for s in spans if s["name"] == "tool.call"]
        assert chats and tools
        assert {s["parent_span_id"] for s in chats + tools} == {turn["span_id"]}
        assert all(s["attributes"]["gen_ai.request.model"] == "local" for s in chats)
        assert all(s["attributes"]["gen_ai.system"] == "bmo" for s in chats)
        assert sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in chats) > 0
        assert sum(s["attributes"]["gen_ai.usage.output_tokens"] for s in chats) > 0
        assert [s["attributes"]["gen_ai.tool.name"] for s in tools] == ["read_file"]
        assert tools[0]["attributes"]["bmo.tool.ok"] is True


def _named(spans: list[dict[str, Any]], request_id: str, name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name and s["attributes"].get("bmo.request_id") == request_id]


def test_a_dead_collector_never_fails_a_chat(make_server: Callable[..., BmoServer]) -> None:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    server = make_server(config_text=otel_config(dead))
    for stream in (False, True, False):
        chat(server, stream=stream)
    # the failed export is reported when the batch is sent (on the exporter's schedule, or at the
    # latest at shutdown): wait for the report, then stop, so a slow machine cannot stop first
    deadline = time.monotonic() + 90
    while "OpenTelemetry: " not in server.stderr() and time.monotonic() < deadline:
        time.sleep(0.2)
    server.stop()
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert " - opentelemetry." not in stderr  # the SDK's per-export log lines stay quiet
    assert stderr.count("OpenTelemetry: ") == 1  # one summarising warning (at most one a minute)
    assert "Connection refused" in stderr
