"""The hand-written OTLP encoder says exactly what the SDK's encoder says, for the spans bmo makes."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from app.otlp_encode import encode_request


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def _spans() -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "bmo", "n": 3, "ok": True}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("bmo", "1.2.3")
    values = {"s": "tëxt", "i": -7, "big": 2**40, "f": 0.25, "b": False, "list": ["a", "b"], "ints": [1, -2]}
    with tracer.start_as_current_span("openai_compat.chat", kind=SpanKind.SERVER, attributes=values) as root:
        root.add_event("queued", {"bmo.depth": 2})
        root.add_event("bare")
        with tracer.start_as_current_span("agent.turn") as turn:
            turn.set_status(Status(StatusCode.ERROR, "upstream said no"))
            link = Link(root.get_span_context())
            with tracer.start_as_current_span("chat m", kind=SpanKind.CLIENT, links=[link]):
                pass
        root.set_status(Status(StatusCode.OK))
    other = TracerProvider(resource=Resource.create({"service.name": "other"}))
    other.add_span_processor(SimpleSpanProcessor(keep))
    with other.get_tracer("x").start_as_current_span("empty", attributes={}):
        pass
    return keep.spans


def test_decodes_to_what_the_sdk_encodes() -> None:
    spans = _spans()
    mine = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert mine == encode_spans(spans)
    assert len([s for r in mine.resource_spans for ss in r.scope_spans for s in ss.spans]) == len(spans)
