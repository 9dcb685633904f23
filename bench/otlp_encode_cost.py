"""CPU per span of the OTLP encoders: the SDK's against `app.otlp_encode`, on spans shaped like bmo's.

python -m bench.otlp_encode_cost
"""

from __future__ import annotations

import time
import uuid

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from app.otlp_encode import OtlpEncoder


def main() -> None:
    spans = []

    class Keep(SpanExporter):
        def export(self, s):
            spans.extend(s)
            return SpanExportResult.SUCCESS

    p = TracerProvider(resource=Resource.create({"service.name": "bmo"}))
    p.add_span_processor(SimpleSpanProcessor(Keep()))
    t = p.get_tracer("bmo")
    for i in range(150):
        rid = uuid.uuid4().hex
        with t.start_as_current_span(
            "openai_compat.chat",
            kind=SpanKind.SERVER,
            attributes={
                "bmo.request_id": rid,
                "bmo.session_id": uuid.uuid4().hex,
                "bmo.route": "chat",
                "bmo.model": "mock/mock-model",
                "bmo.stream": False,
                "bmo.client_ua": "wrk",
                "bmo.tool_policy": "chat_only",
                "bmo.ambiguity_action": "ask",
            },
        ) as s:
            with t.start_as_current_span("agent.turn", attributes={"bmo.model": "mock/mock-model"}) as tt:
                with t.start_as_current_span(
                    "chat mock-model",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": "mock-model",
                        "gen_ai.usage.input_tokens": 12 + i,
                        "gen_ai.usage.output_tokens": 5,
                        "bmo.elapsed_ms": 1.234 * i,
                    },
                ):
                    pass
                tt.set_attribute("bmo.outcome", "final_answer")
            s.set_attributes(
                {
                    "bmo.outcome": "final_answer",
                    "bmo.elapsed_ms": 2.5 * i,
                    "http.response.status_code": 200,
                    "bmo.completion_tokens": 5,
                }
            )
    e = OtlpEncoder()
    for name, f in (
        ("sdk", lambda: encode_spans(spans).SerializePartialToString()),
        ("ours", lambda: e.encode(spans)),
    ):
        best = 1e9
        for _ in range(7):
            c = time.thread_time()
            f()
            best = min(best, time.thread_time() - c)
        print(name, f"{best * 1e6 / len(spans):.1f} us/span (cpu)")


if __name__ == "__main__":
    main()
