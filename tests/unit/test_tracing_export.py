"""Where spans go: `[options.telemetry.otel]` plus the standard OTEL_* variables (env wins)."""

from __future__ import annotations

import pytest

from app.config import Otel
from app.tracing import Export, Tracing, parse_headers, resolve_export


@pytest.mark.parametrize(
    ("otel", "env", "expected"),
    [
        (Otel(), {}, Export("http/protobuf", "http://127.0.0.1:4318/v1/traces")),
        (Otel(endpoint="http://c:4318/"), {}, Export("http/protobuf", "http://c:4318/v1/traces")),
        (Otel(endpoint="http://c:4318/v1/traces"), {}, Export("http/protobuf", "http://c:4318/v1/traces")),
        (
            Otel(endpoint="http://c:4318"),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://env:443/otlp"},
            Export("http/protobuf", "https://env:443/otlp/v1/traces"),
        ),
        (
            Otel(endpoint="http://c:4318"),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
            },
            Export("http/protobuf", "http://t/x"),  # the signal variable is used exactly as given
        ),
        (Otel(protocol="grpc"), {}, Export("grpc", "http://127.0.0.1:4317")),  # default port follows
        (Otel(protocol="grpc", endpoint="http://c:5555"), {}, Export("grpc", "http://c:5555")),
        (
            Otel(),
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://g:4317"},
            Export("grpc", "http://g:4317"),
        ),
        (
            Otel(protocol="grpc", endpoint="http://c:4317"),
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            Export("http/protobuf", "http://c:4317/v1/traces"),
        ),
        (
            Otel(),
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            Export("http/protobuf", "http://127.0.0.1:4318/v1/traces"),
        ),
    ],
)
def test_endpoint_and_protocol(otel: Otel, env: dict[str, str], expected: Export) -> None:
    assert resolve_export(otel, env) == expected


def test_headers_come_from_the_signal_variable_first() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "B=two%20words, c = 3"}
    assert resolve_export(Otel(), env).headers == {"b": "two words", "c": "3"}
    assert resolve_export(Otel(), {"OTEL_EXPORTER_OTLP_HEADERS": "a=1"}).headers == {"a": "1"}


def test_parse_headers_skips_junk() -> None:
    assert parse_headers("") == {}
    assert parse_headers("novalue,=x,k=v=w") == {"k": "v=w"}


def test_the_default_tracing_is_a_no_op() -> None:
    tracing = Tracing()
    assert not tracing.enabled and tracing.endpoint == ""
    tracing.open_request({"request_id": "r", "route": "chat_completions"})
    tracing.action({"request_id": "r"}, "final_answer", True, "info")
    tracing.turn_started("r", "m")
    tracing.turn_ended("r", None)
    tracing.model_call(
        "r", provider="p", model="m", prompt_tokens=1, completion_tokens=1, latency_ms=1, finish_reason="stop"
    )
    tracing.tool_call("r", name="t", ok=True, duration_ms=1, call_id="c")
    assert tracing.force_flush()
    tracing.shutdown()
    assert (tracing.exported_spans, tracing.dropped_spans) == (0, 0)
