"""The bench's OTLP sink keeps connections alive, as a real collector does (bench/otlp_sink.py)."""

from __future__ import annotations

import http.client

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.otlp_sink import _Counts, _receiver


def _export_body(name: str) -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name = name
    span.trace_id, span.span_id = b"\x01" * 16, b"\x02" * 8
    return request.SerializeToString()


def test_two_exports_travel_on_one_connection() -> None:
    counts = _Counts()
    receiver = _receiver(counts).start()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        socks = []
        for name in ("first", "second"):
            conn.request("POST", "/v1/traces", _export_body(name), {"Content-Type": "application/x-protobuf"})
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200
            assert reply.version == 11, "the sink must answer HTTP/1.1"
            assert not reply.will_close, "the sink closed the connection after an export"
            socks.append(conn.sock)
        assert socks[0] is socks[1] is not None
        assert counts.as_dict() == {"spans": 2, "exports": 2, "names": {"first": 1, "second": 1}}
    finally:
        conn.close()
        receiver.stop()
