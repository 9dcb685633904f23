"""bmo's lean spans export exactly what the SDK's tracer would have exported for the same calls."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from app.tracing import Tracing
from app.tracing_sdk import LeanSpan, build_pipeline

DEAD = "http://127.0.0.1:9/v1/traces"  # nothing is exported: the spans are caught at on_end


def _record(lean: bool) -> tuple[list[ReadableSpan], Tracing]:
    pipeline = build_pipeline(
        protocol="http/protobuf", endpoint=DEAD, headers={}, resource={"service.name": "bmo"}, lean_spans=lean
    )
    ended: list[ReadableSpan] = []
    pipeline.processor.on_end = ended.append  # type: ignore[method-assign]
    tracing = Tracing(pipeline)
    _a_chat(tracing)
    tracing.shutdown(timeout=0.5)
    return ended, tracing


def _a_chat(tracing: Tracing) -> None:
    """Every call `app.tracing` makes, in the order a request makes them, and a few it should ignore."""
    rid, other = "a" * 32, "b" * 32
    fired = {"request_id": rid, "session_id": "s1", "route": "chat_completions", "model": "m", "stream": True}
    tracing.open_request({**fired, "is_session_reuse": False, "client_ua": "ü" * 3, "none": None, "n": 7})
    tracing.action({**fired, "detail": ["x"], "depth": 2.5}, "model_override_applied", False, "info")
    tracing.turn_started(rid, "m")
    call = {"provider": "openai", "model": "m", "prompt_tokens": 3, "completion_tokens": 4}
    tracing.model_call(rid, **call, latency_ms=1.5, finish_reason="stop")  # type: ignore[arg-type]
    tracing.model_call(rid, **call, latency_ms=0, finish_reason="", step=2)  # type: ignore[arg-type]
    tracing.tool_call(rid, name="bash", ok=False, duration_ms=2.0, call_id="c1", step=1)
    tracing.tool_call(rid, name="read", ok=True, duration_ms=0.1, call_id="c2")
    tracing.turn_ended(rid, "completed")
    tracing.turn_ended(rid, "again")  # no open turn: ignored
    fields = {**fired, "model": "m2", "status_code": 502, "error": "upstream said no", "latency_ms": 3.25}
    tracing.action(fields, "upstream_error", True, "warn")
    tracing.action(fields, "late", True, "info")  # its span has ended: ignored
    tracing.open_request({"request_id": other, "route": "chat_completions"})
    tracing.open_request({"request_id": other, "route": "chat_completions", "again": True})  # ends the first
    tracing.turn_started(other, "m")  # still open at shutdown: abandoned


def _comparable(spans: list[ReadableSpan]) -> tuple[Any, list[tuple[int, int | None]]]:
    """The encoded export with ids and times zeroed, and the parent links as span indexes."""
    index = {s.context.span_id: i for i, s in enumerate(spans)}
    links = [(i, index.get(s.parent.span_id) if s.parent else None) for i, s in enumerate(spans)]
    return _zeroed(encode_spans(spans)), links


def _zeroed(request: Any) -> Any:
    """An export request with its ids and times zeroed (they differ from run to run)."""
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                span.trace_id = span.span_id = span.parent_span_id = b""
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
    return request


def test_lean_spans_export_what_the_sdk_exports() -> None:
    lean, lean_tracing = _record(lean=True)
    sdk, _ = _record(lean=False)
    assert lean_tracing._pipeline is not None and lean_tracing._pipeline.lean is not None  # the lean path ran
    assert len(lean) == len(sdk) == 9
    assert _comparable(lean) == _comparable(sdk)
    values = [dict(s.attributes or {}) for s in lean]
    assert values == [dict(s.attributes or {}) for s in sdk]  # as Python values too: tuples, not lists
    # one trace per request, and a child's trace is its parent's
    by_id = {s.context.span_id: s for s in lean}
    for span in lean:
        if span.parent is not None:
            assert by_id[span.parent.span_id].context.trace_id == span.context.trace_id
            assert span.context.trace_flags == by_id[span.parent.span_id].context.trace_flags
    assert {s.context.trace_flags.sampled for s in lean} == {True}
    assert [s.context.trace_flags for s in lean] == [s.context.trace_flags for s in sdk]


def test_a_past_span_keeps_its_start_and_end() -> None:
    lean, _ = _record(lean=True)
    sdk, _ = _record(lean=False)
    for mine, theirs in zip(lean, sdk, strict=True):
        assert mine.end_time is not None and mine.start_time is not None
        assert (mine.end_time - mine.start_time > 0) == (theirs.end_time - theirs.start_time > 0)  # type: ignore[operator]
    model = next(s for s in lean if s.name == "gen_ai.chat")
    assert model.end_time - model.start_time == 1_500_000  # type: ignore[operator]


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "4", "OTEL_SPAN_EVENT_COUNT_LIMIT": "0"},
        {"OTEL_ATTRIBUTE_COUNT_LIMIT": "2", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "1"},
        {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "0"},
    ],
)
def test_count_limits_drop_what_the_sdk_drops(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lean, tracing = _record(lean=True)
    sdk, _ = _record(lean=False)
    assert tracing._pipeline is not None and tracing._pipeline.lean is not None
    assert _comparable(lean) == _comparable(sdk)
    assert any(s.dropped_attributes for s in lean)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "3"},
        {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "3"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
    ],
)
def test_what_would_change_the_spans_uses_the_sdk_tracer(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ended, tracing = _record(lean=True)
    assert tracing._pipeline is not None and tracing._pipeline.lean is None
    assert not any(isinstance(s, LeanSpan) for s in ended)
    if "OTEL_TRACES_SAMPLER" not in env:
        texts = [v for s in ended for v in (s.attributes or {}).values() if isinstance(v, str)]
        assert texts and all(len(v) <= 3 for v in texts)


def test_bmos_own_encoder_sends_the_same_bytes_for_lean_and_sdk_spans() -> None:
    """What goes on the wire: lean spans hand `OtlpEncoder` plain dicts and tuples, the SDK's spans
    its own types; the exporter's request must not tell them apart."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from app.otlp_encode import OtlpEncoder

    lean, _ = _record(lean=True)
    sdk, _ = _record(lean=False)

    def decoded(spans: list[ReadableSpan]) -> Any:
        return _zeroed(ExportTraceServiceRequest.FromString(OtlpEncoder().encode(spans)))

    assert decoded(lean) == decoded(sdk) == _comparable(sdk)[0]
