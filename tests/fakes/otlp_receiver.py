"""A real OTLP trace receiver for tests: OTLP/HTTP (protobuf) and, optionally, OTLP/gRPC.

`OtlpReceiver` serves `POST /v1/traces` on 127.0.0.1:<free port> from a
background thread (http.server), decodes each `ExportTraceServiceRequest`
(gzip/deflate bodies too) and answers 200 with an empty
`ExportTraceServiceResponse`. `OtlpGrpcReceiver` does the same over gRPC.
Both keep every span as a plain dict:

    with OtlpReceiver() as otlp:
        ...  # export to otlp.endpoint (base URL) or otlp.traces_url
        spans = otlp.wait_for(lambda s: any(x["name"] == "agent.turn" for x in s), timeout=10)
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpGrpcReceiver", "OtlpReceiver", "count_spans", "decode_request"]

Spans = list[dict[str, Any]]


class _Store:
    """Spans and request metadata, shared by the HTTP and gRPC receivers."""

    def __init__(self, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._spans: Spans = []
        self.span_count = 0
        self.requests: list[dict[str, Any]] = []  # path and headers of every export

    def add(self, body: bytes, meta: dict[str, Any]) -> None:
        if not self._keep:  # count only, as cheaply as a real collector would accept them
            count = count_spans(body)
            with self._lock:
                self.span_count += count
            return
        spans = decode_request(body)
        with self._lock:
            self._spans.extend(spans)
            self.span_count += len(spans)
            self.requests.append(meta)

    def spans(self) -> Spans:
        with self._lock:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[Spans], bool], timeout: float = 10.0) -> Spans:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() >= deadline:
                raise AssertionError(f"OTLP receiver: condition not met in {timeout}s; spans: {spans}")
            time.sleep(0.05)


class _Base:
    def __init__(self, keep: bool = True) -> None:
        self._store = _Store(keep)

    @property
    def span_count(self) -> int:
        return self._store.span_count

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._store.requests

    def spans(self) -> Spans:
        return self._store.spans()

    def wait_for(self, predicate: Callable[[Spans], bool], timeout: float = 10.0) -> Spans:
        return self._store.wait_for(predicate, timeout)

    def named(self, name: str) -> Spans:
        return [s for s in self.spans() if s["name"] == name]


class OtlpReceiver(_Base):
    """OTLP/HTTP: `POST /v1/traces` with a protobuf body. `keep=False` only counts spans."""

    def __init__(self, *, keep: bool = True) -> None:
        super().__init__(keep)
        store = self._store

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                body = _inflate(body, self.headers.get("Content-Encoding", ""))
                meta = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
                store.add(body, meta)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """The base URL, as `[options.telemetry.otel] endpoint` takes it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return f"{self.endpoint}/v1/traces"

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class OtlpGrpcReceiver(_Base):
    """OTLP/gRPC: the `TraceService/Export` method on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        super().__init__()
        store = self._store

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                meta = {"path": "grpc", "headers": dict(context.invocation_metadata())}
                store.add(request.SerializeToString(), meta)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> OtlpGrpcReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _inflate(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def count_spans(body: bytes) -> int:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def decode_request(body: bytes) -> Spans:
    """An `ExportTraceServiceRequest` as a flat list of span dicts."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: Spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            spans.extend(_span(span, resource) for span in scope_spans.spans)
    return spans


def _span(span: Any, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "kind": span.kind,  # 1 internal, 2 server, 3 client
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "attributes": _attributes(span.attributes),
        "events": [{"name": e.name, "attributes": _attributes(e.attributes)} for e in span.events],
        "status": {"code": span.status.code, "message": span.status.message},  # 0 unset, 1 ok, 2 error
        "resource": resource,
    }


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)
