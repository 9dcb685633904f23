"""Traces: the OpenTelemetry side of the telemetry seam (SPEC §11).

One span per request (`openai_compat.<route>`, kind SERVER) carrying the fired
fields as `bmo.*` attributes; non-terminal actions are span events; the
terminal action sets the outcome (error status for warn outcomes) and ends
it. Children: `agent.turn`, and per step `gen_ai.chat` (GenAI semantic
conventions) and `tool.call`, created after the fact from the recorded
latency. Spans are keyed by run id (= request id) and held here until they
end, so callers never pass span objects around.

`build_tracing` returns a no-op `Tracing` when tracing is disabled: every
call returns at once and the OpenTelemetry packages are not even imported.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec
from urllib.parse import unquote

from app.config import Otel

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from app.tracing_sdk import Pipeline

__all__ = ["Export", "Tracing", "build_tracing", "parse_headers", "resolve_export"]

SHUTDOWN_TIMEOUT_S = 2.0
MAX_OPEN_SPANS = 4096  # per kind; a run that never finishes must not leak spans forever
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"
PROTOCOLS = ("http/protobuf", "grpc")
TRACES_PATH = "/v1/traces"
ALREADY_ON_SPAN = frozenset({"request_id", "session_id", "route"})  # set when the request span opened

log = logging.getLogger("app.tracing")

P = ParamSpec("P")


def _never_raises(
    method: Callable[Concatenate[Tracing, P], None],
) -> Callable[Concatenate[Tracing, P], None]:
    """Tracing must never fail a request: a broken span is logged and forgotten."""

    @functools.wraps(method)
    def guarded(self: Tracing, *args: P.args, **kwargs: P.kwargs) -> None:
        if self._sdk is None:
            return
        try:
            method(self, *args, **kwargs)
        except Exception:
            log.debug("tracing: %s failed", method.__name__, exc_info=True)

    return guarded


class Tracing:
    """Request, turn, model-call and tool-call spans; a no-op without a pipeline."""

    def __init__(self, pipeline: Pipeline | None = None) -> None:
        self._pipeline = pipeline
        self._sdk: ModuleType | None = None
        self._requests: dict[str, Span] = {}
        self._turns: dict[str, Span] = {}
        self._closed = False
        if pipeline is not None:
            from app import tracing_sdk

            self._sdk = tracing_sdk

    @property
    def enabled(self) -> bool:
        """True while spans are being recorded (False when disabled or after shutdown)."""
        return self._sdk is not None

    @property
    def endpoint(self) -> str:
        return self._pipeline.stats.endpoint if self._pipeline is not None else ""

    @property
    def exported_spans(self) -> int:
        return self._pipeline.stats.exported if self._pipeline is not None else 0

    @property
    def dropped_spans(self) -> int:
        return self._pipeline.stats.dropped if self._pipeline is not None else 0

    @_never_raises
    def open_request(self, fields: Mapping[str, Any]) -> None:
        run_id = str(fields.get("request_id", ""))
        span = self._start(
            f"openai_compat.{fields.get('route', '')}", None, self._kind("SERVER"), _bmo(fields)
        )
        self._hold(self._requests, run_id, span)

    @_never_raises
    def action(self, fields: Mapping[str, Any], outcome: str, terminal: bool, level: str) -> None:
        run_id = str(fields.get("request_id", ""))
        if not terminal:
            span = self._requests.get(run_id)
            if span is not None:
                span.add_event(outcome, attributes=_bmo(fields))
            return
        span = self._requests.pop(run_id, None)
        if span is None:  # e.g. a deferred run finishing after its span was abandoned
            return
        span.set_attributes(_bmo({k: v for k, v in fields.items() if k not in ALREADY_ON_SPAN}))
        span.set_attribute("bmo.outcome", outcome)
        if isinstance(fields.get("status_code"), int):
            span.set_attribute("http.response.status_code", fields["status_code"])
        if level == "warn":
            span.set_status(self._error(str(fields.get("error") or outcome)))
        span.end()

    @_never_raises
    def turn_started(self, run_id: str, model: str) -> None:
        attributes = {"bmo.request_id": run_id, "bmo.model": model}
        span = self._start("agent.turn", self._requests.get(run_id), self._kind("INTERNAL"), attributes)
        self._hold(self._turns, run_id, span)

    @_never_raises
    def turn_ended(self, run_id: str, outcome: str | None) -> None:
        span = self._turns.pop(run_id, None)
        if span is None:
            return
        if outcome:
            span.set_attribute("bmo.outcome", outcome)
        span.end()

    @_never_raises
    def model_call(
        self,
        run_id: str,
        *,
        provider: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        finish_reason: str,
        step: int = 0,
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": provider,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else [],
            "gen_ai.usage.input_tokens": prompt_tokens,
            "gen_ai.usage.output_tokens": completion_tokens,
            "bmo.request_id": run_id,
        }
        if step:
            attributes["bmo.step"] = step
        self._past("gen_ai.chat", run_id, self._kind("CLIENT"), attributes, latency_ms)

    @_never_raises
    def tool_call(
        self, run_id: str, *, name: str, ok: bool, duration_ms: float, call_id: str, step: int = 0
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "bmo.tool.ok": ok,
            "bmo.request_id": run_id,
        }
        if step:
            attributes["bmo.step"] = step
        error = None if ok else f"tool {name} failed"
        self._past("tool.call", run_id, self._kind("INTERNAL"), attributes, duration_ms, error=error)

    def force_flush(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Export what has ended; True when done within `timeout` (seconds)."""
        if self._pipeline is None or self._closed:
            return True
        return self._pipeline.force_flush(timeout)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """End open spans, flush for at most about `timeout` seconds. Idempotent."""
        if self._pipeline is None or self._closed:
            return
        self._closed = True
        for spans in (self._turns, self._requests):
            for span in spans.values():
                span.set_attribute("bmo.abandoned", True)
                span.end()
            spans.clear()
        self._sdk = None  # from now on every call is a no-op
        self._pipeline.shutdown(timeout)

    # internals

    def _kind(self, name: str) -> Any:
        return getattr(self._sdk.SpanKind, name)  # type: ignore[union-attr]

    def _error(self, description: str) -> Any:
        sdk = self._sdk
        return sdk.Status(sdk.StatusCode.ERROR, description)  # type: ignore[union-attr]

    def _start(
        self,
        name: str,
        parent: Span | None,
        kind: Any,
        attributes: Mapping[str, Any],
        start_time: int | None = None,
    ) -> Span:
        assert self._pipeline is not None  # callers run only while `_sdk` is set
        return self._pipeline.start(name, parent, kind, attributes, start_time)  # type: ignore[no-any-return]

    def _past(
        self,
        name: str,
        run_id: str,
        kind: Any,
        attributes: Mapping[str, Any],
        duration_ms: float,
        *,
        error: str | None = None,
    ) -> None:
        """A span for something that already happened: it ends now and lasted `duration_ms`."""
        now = time.time_ns()
        parent = self._turns.get(run_id) or self._requests.get(run_id)
        span = self._start(name, parent, kind, attributes, now - int(max(duration_ms, 0.0) * 1e6))
        if error is not None:
            span.set_status(self._error(error))
        span.end(end_time=now)

    def _hold(self, spans: dict[str, Span], run_id: str, span: Span) -> None:
        stale = spans.pop(run_id, None)
        if stale is not None:
            stale.end()
        if len(spans) >= MAX_OPEN_SPANS:
            oldest = spans.pop(next(iter(spans)))
            oldest.set_attribute("bmo.abandoned", True)
            oldest.end()
        spans[run_id] = span


def _bmo(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {f"bmo.{name}": _attribute(value) for name, value in fields.items() if value is not None}


def _attribute(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class Export:
    """Where and how spans go, after the standard OTEL_* variables are applied."""

    protocol: str
    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)


def build_tracing(otel: Otel, env: Mapping[str, str], *, service_version: str = "0") -> Tracing:
    """The process's Tracing: a no-op unless `[options.telemetry.otel] enabled = true`."""
    if not otel.enabled or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracing()
    from app.tracing_sdk import build_pipeline

    export = resolve_export(otel, env)
    resource = {"service.name": env.get("OTEL_SERVICE_NAME") or "bmo", "service.version": service_version}
    pipeline = build_pipeline(
        protocol=export.protocol, endpoint=export.endpoint, headers=export.headers, resource=resource
    )
    return Tracing(pipeline)


def resolve_export(otel: Otel, env: Mapping[str, str]) -> Export:
    """Config first, then the standard variables on top (the OTel spec: env wins)."""
    protocol = _protocol(otel, env)
    signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        configured = DEFAULT_GRPC_ENDPOINT if otel.endpoint == Otel().endpoint else otel.endpoint
        endpoint = signal or base or configured
    else:
        endpoint = signal or _traces_url(base or otel.endpoint)
    raw_headers = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    return Export(protocol, endpoint, parse_headers(raw_headers))


def _protocol(otel: Otel, env: Mapping[str, str]) -> str:
    wanted = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if not wanted:
        return otel.protocol
    if wanted not in PROTOCOLS:
        log.warning("OpenTelemetry: protocol %r is not supported; using %s", wanted, otel.protocol)
        return otel.protocol
    return wanted


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def parse_headers(raw: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with URL-encoded values (the OTEL_EXPORTER_OTLP_HEADERS format)."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            headers[unquote(name.strip()).lower()] = unquote(value.strip())
    return headers
