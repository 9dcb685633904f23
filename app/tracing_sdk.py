"""The OpenTelemetry SDK half of `app.tracing`, imported only when tracing is enabled.

A dead collector must never slow a request, block shutdown for long, or fill
the logs (performance-notes §7): exports run on the SDK's batch thread with
short timeouts; after a failed export the next batches are dropped unsent for
a few seconds (encoding a batch costs ~50 µs a span, wasted on a dead
collector); every span that does not reach the collector is counted here
(`ExportStats`); the SDK's own exporter logs are silenced while a pipeline is
alive, and one summarising warning is logged at most once a minute.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, set_span_in_context

__all__ = [
    "EXPORT_TIMEOUT_S",
    "ExportStats",
    "Pipeline",
    "SpanKind",
    "Status",
    "StatusCode",
    "build_pipeline",
    "set_span_in_context",
]

EXPORT_TIMEOUT_S = 2.0  # per export request (the SDK default is 10 s, retried)
SCHEDULE_DELAY_MS = 500  # batch thread wake-up: spans leave within about half a second
MAX_QUEUE_SIZE = 2048
MAX_EXPORT_BATCH = 128  # spans per export: bounds the GIL-holding encode of one batch (~1.3 ms)
COOL_DOWN_S = 5.0  # after a failed export: drop batches unsent (no encoding, no connect) this long
WARN_EVERY_S = 60.0
# the SDK loggers that log every failed or retried export (and queue drops)
SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)
# SDK lines that say an export gave up, not why: the warning keeps the earlier, causal line
UNINFORMATIVE = ("max retries or shutdown", "Shutdown in progress", "already shutdown")
OS_ERROR = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")

log = logging.getLogger("app.tracing")


class ExportStats:
    """Exported and dropped span counts, and the once-a-minute warning about drops."""

    def __init__(self, endpoint: str, *, warn_every_s: float = WARN_EVERY_S) -> None:
        self.endpoint = endpoint
        self.exported = 0
        self.dropped = 0
        self.last_failed = False
        self.last_reason = ""
        self._warn_every_s = warn_every_s
        self._warned_at: float | None = None
        self._lock = threading.Lock()

    def ok(self, count: int) -> None:
        with self._lock:
            self.exported += count
            self.last_failed = False

    def lost(self, count: int, why: str) -> None:
        with self._lock:
            self.dropped += count
            self.last_failed = True
            due = self._warned_at is None or time.monotonic() - self._warned_at >= self._warn_every_s
            if due:
                self._warned_at = time.monotonic()
            dropped = self.dropped
        if due:
            reason = f": {self.last_reason}" if self.last_reason else ""
            log.warning(
                "OpenTelemetry: %s; %d span(s) dropped so far (exporting to %s%s). "
                "Requests are not affected; this warning repeats at most once a minute.",
                why,
                dropped,
                self.endpoint,
                reason,
            )


class QuietSdkLogs(logging.Filter):
    """Keeps the SDK's per-export log lines out of stderr; remembers the last reason."""

    def __init__(self, stats: ExportStats) -> None:
        super().__init__()
        self._stats = stats

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and not any(s in message for s in UNINFORMATIVE):
            cause = OS_ERROR.search(message)  # "[Errno 111] Connection refused" says it all
            self._stats.last_reason = cause.group(0) if cause else message[:200]
        return False

    def install(self) -> None:
        for name in SDK_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def remove(self) -> None:
        for name in SDK_LOGGERS:
            logging.getLogger(name).removeFilter(self)


class CountingExporter(SpanExporter):
    """Wraps the OTLP exporter: counts what it exported and what it lost."""

    def __init__(self, inner: SpanExporter, stats: ExportStats, *, cool_down_s: float = COOL_DOWN_S) -> None:
        self._inner = inner
        self._stats = stats
        self._cool_down_s = cool_down_s
        self._retry_at = 0.0  # after a failed export, batches are dropped unsent until then
        self._stop_at: float | None = None  # shutting down: after this, drop instead of exporting
        self._sealed = False  # counted as dropped already: neither send nor count again
        self._closed = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._sealed:
            return SpanExportResult.FAILURE
        now = time.monotonic()
        if self._stop_at is not None and (self._stats.last_failed or now >= self._stop_at):
            self._stats.lost(len(spans), "collector unreachable at shutdown")
            return SpanExportResult.FAILURE
        if now < self._retry_at:  # the collector just failed: drop without encoding or connecting
            self._stats.lost(len(spans), "span export failed")
            return SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception as error:  # an exporter bug must not kill the batch thread
            self._stats.last_reason = repr(error)[:300]
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._stats.ok(len(spans))
        else:
            self._retry_at = time.monotonic() + self._cool_down_s
            self._stats.lost(len(spans), "span export failed")
        return result

    def stop_by(self, deadline: float) -> None:
        self._stop_at = deadline

    def seal(self) -> None:
        self._sealed = True

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        shutdown = self._inner.shutdown
        if "timeout_millis" in inspect.signature(shutdown).parameters:
            shutdown(timeout_millis=500)  # type: ignore[call-arg]
        else:
            shutdown()  # interrupts a retry back-off in progress

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class CountingBatchProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor that counts the spans its full queue pushes out."""

    def __init__(self, exporter: SpanExporter, stats: ExportStats) -> None:
        super().__init__(
            exporter,
            max_queue_size=MAX_QUEUE_SIZE,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            max_export_batch_size=MAX_EXPORT_BATCH,
            export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
        )
        self._stats = stats

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled and self.queued() >= MAX_QUEUE_SIZE:
            self._stats.lost(1, "span queue full")  # the SDK drops the oldest span silently
        super().on_end(span)

    def queued(self) -> int:
        queue = getattr(self._batch_processor, "_queue", None)  # SDK internals: best effort
        return len(queue) if queue is not None else 0


@dataclass(slots=True)
class Pipeline:
    provider: TracerProvider
    tracer: Tracer
    exporter: CountingExporter
    processor: CountingBatchProcessor
    stats: ExportStats
    quiet: QuietSdkLogs

    def force_flush(self, timeout: float) -> bool:
        return _in_thread(self.provider.force_flush).wait(timeout)

    def shutdown(self, timeout: float) -> None:
        """Flush what the collector takes within `timeout`; count the rest as dropped."""
        self.exporter.stop_by(time.monotonic() + timeout)
        finished = _in_thread(self.provider.shutdown)
        if not finished.wait(timeout):
            self.exporter.shutdown()  # interrupts a retry back-off; later batches are dropped at once
            if not finished.wait(0.5):
                self.exporter.seal()  # whatever is still queued is counted now, never sent
                self.stats.lost(self.processor.queued(), "shutdown timed out")
        self.quiet.remove()


def _in_thread(call: Callable[[], object]) -> threading.Event:
    """Run a blocking SDK call on a daemon thread; the event is set when it returns."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        finally:
            done.set()

    threading.Thread(target=run, name="bmo-otel-flush", daemon=True).start()
    return done


def build_pipeline(
    *,
    protocol: str,
    endpoint: str,
    headers: Mapping[str, str],
    resource: Mapping[str, str],
) -> Pipeline:
    stats = ExportStats(endpoint)
    quiet = QuietSdkLogs(stats)
    quiet.install()
    exporter = CountingExporter(_otlp_exporter(protocol, endpoint, headers), stats)
    processor = CountingBatchProcessor(exporter, stats)
    provider = TracerProvider(resource=Resource.create(dict(resource)))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bmo")
    return Pipeline(provider, tracer, exporter, processor, stats, quiet)


def _otlp_exporter(protocol: str, endpoint: str, headers: Mapping[str, str]) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, headers=dict(headers) or None, timeout=EXPORT_TIMEOUT_S)
    return _hand_encoded_http_exporter()(
        endpoint=endpoint, headers=dict(headers) or None, timeout=EXPORT_TIMEOUT_S
    )


def _hand_encoded_http_exporter() -> type[SpanExporter]:
    """The SDK's OTLP/HTTP exporter, encoding with `app.otlp_encode` (imported only when used)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    from app.otlp_encode import OtlpEncoder

    class HandEncodedHttpExporter(HttpExporter):  # type: ignore[misc]
        """Same transport, retries and compression; the batch is encoded ~2.5x cheaper.

        The SDK's encoder holds the GIL for ~25 µs a span on the export thread, and the
        request being served at that moment waits: at c=1 that was the p99 (see
        docs/performance-analysis.md). Falls back to the SDK's own path if its private
        HTTP client is not where this SDK version keeps it.
        """

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self._bmo_encoder = OtlpEncoder()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            client = getattr(self, "_client", None)
            if self._shutdown or client is None or not hasattr(client, "export"):
                return super().export(spans)  # type: ignore[no-any-return]
            try:
                data = self._bmo_encoder.encode(spans)
            except Exception as error:  # an attribute we cannot encode: the SDK's path logs it
                log.debug("hand encoding failed (%r): using the SDK encoder", error)
                return super().export(spans)  # type: ignore[no-any-return]
            result = client.export(data)
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    return HandEncodedHttpExporter
