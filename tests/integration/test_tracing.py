"""OpenTelemetry traces (SPEC §11) against a real OTLP receiver, in process."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from app.agent.recorder import RunRecorder
from app.agent.tools.base import ToolResult
from app.agent.tools.registry import ToolRegistry, all_builtin_tools
from app.agent.turns import TurnPolicy, TurnRunner
from app.config import Otel
from app.providers.base import ChatMessage, ToolCall, Usage
from app.providers.catalog import ResolvedModel
from app.providers.local import LocalProvider
from app.telemetry import Records
from app.tracing import Tracing, build_tracing
from tests.fakes.otlp_receiver import OtlpGrpcReceiver, OtlpReceiver

SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP span kinds
UNSET, ERROR = 0, 2  # OTLP status codes


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def dead_endpoint() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fired(request_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "session_id": "",
        "route": "chat_completions",
        "tool_policy": "chat_only",
        "ambiguity_action": "ask",
        "model": "bmo/local",
        "stream": True,
        "is_session_reuse": False,
        "client_ua": "pytest",
        **extra,
    }


def terminal(request_id: str, status_code: int = 200, **extra: Any) -> dict[str, Any]:
    fields = {"request_id": request_id, "session_id": "", "route": "chat_completions"}
    return {**fields, "status_code": status_code, "elapsed_ms": 12.5, **extra}


def one_request(tracing: Tracing, request_id: str) -> None:
    tracing.open_request(fired(request_id))
    tracing.turn_started(request_id, "bmo/local")
    tracing.model_call(
        request_id,
        provider="bmo",
        model="local",
        prompt_tokens=11,
        completion_tokens=7,
        latency_ms=30.0,
        finish_reason="tool_calls",
    )
    tracing.tool_call(request_id, name="read_file", ok=True, duration_ms=4.0, call_id="call_1")
    tracing.tool_call(request_id, name="bash", ok=False, duration_ms=1.0, call_id="call_2")
    tracing.turn_ended(request_id, "final_answer")
    tracing.action(
        {"request_id": request_id, "session_id": "", "route": "chat_completions", "model": "x"},
        "model_override_applied",
        False,
        "info",
    )
    tracing.action(terminal(request_id), "final_answer", True, "info")


def by_name(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    named: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        named.setdefault(span["name"], []).append(span)
    return named


def test_a_request_becomes_one_trace_with_turn_model_and_tool_children(otlp: OtlpReceiver) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {}, service_version="9.9")
    request_id = uuid4().hex
    one_request(tracing, request_id)
    tracing.shutdown()
    spans = by_name(otlp.wait_for(lambda s: len(s) == 5))
    (request,) = spans["openai_compat.chat_completions"]
    (turn,) = spans["agent.turn"]
    (chat,) = spans["gen_ai.chat"]
    read, bash = sorted(spans["tool.call"], key=lambda s: s["attributes"]["gen_ai.tool.call.id"])

    assert {s["trace_id"] for s in (request, turn, chat, read, bash)} == {request["trace_id"]}
    assert request["parent_span_id"] == "" and request["kind"] == SERVER
    assert turn["parent_span_id"] == request["span_id"] and turn["kind"] == INTERNAL
    assert chat["parent_span_id"] == turn["span_id"] and chat["kind"] == CLIENT
    assert read["parent_span_id"] == bash["parent_span_id"] == turn["span_id"]

    attrs = request["attributes"]
    assert attrs["bmo.request_id"] == request_id and attrs["bmo.route"] == "chat_completions"
    assert attrs["bmo.stream"] is True and attrs["bmo.is_session_reuse"] is False
    assert attrs["bmo.model"] == "bmo/local" and attrs["bmo.tool_policy"] == "chat_only"
    assert attrs["bmo.client_ua"] == "pytest" and attrs["bmo.session_id"] == ""
    assert attrs["bmo.outcome"] == "final_answer" and attrs["bmo.status_code"] == 200
    assert attrs["bmo.elapsed_ms"] == 12.5 and "bmo.error" not in attrs
    assert request["status"]["code"] == UNSET
    (event,) = request["events"]
    assert event["name"] == "model_override_applied" and event["attributes"]["bmo.model"] == "x"
    assert request["resource"]["service.name"] == "bmo"
    assert request["resource"]["service.version"] == "9.9"

    assert turn["attributes"]["bmo.outcome"] == "final_answer"
    assert chat["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "bmo",
        "gen_ai.provider.name": "bmo",
        "gen_ai.request.model": "local",
        "gen_ai.response.finish_reasons": ["tool_calls"],
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
        "bmo.request_id": request_id,
    }
    assert chat["end_ns"] - chat["start_ns"] == pytest.approx(30e6, rel=0.01)  # retroactive
    assert read["attributes"]["gen_ai.tool.name"] == "read_file"
    assert read["attributes"]["bmo.tool.ok"] is True and read["status"]["code"] == UNSET
    assert bash["attributes"]["bmo.tool.ok"] is False and bash["status"]["code"] == ERROR
    assert tracing.exported_spans == 5 and tracing.dropped_spans == 0


def test_warn_outcome_sets_error_status_with_the_error(otlp: OtlpReceiver) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    first, second = uuid4().hex, uuid4().hex
    tracing.open_request(fired(first))
    tracing.action(terminal(first, 500, error="upstream exploded"), "error_500", True, "warn")
    tracing.open_request(fired(second))
    tracing.action(terminal(second), "recovery_failed", True, "warn")
    tracing.shutdown()
    spans = {s["attributes"]["bmo.request_id"]: s for s in otlp.wait_for(lambda s: len(s) == 2)}
    assert spans[first]["status"] == {"code": ERROR, "message": "upstream exploded"}
    assert spans[first]["attributes"]["bmo.error"] == "upstream exploded"
    assert spans[first]["attributes"]["http.response.status_code"] == 500
    assert spans[second]["status"] == {"code": ERROR, "message": "recovery_failed"}


def test_calls_without_an_open_span_are_harmless(otlp: OtlpReceiver) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    late = uuid4().hex
    tracing.action(terminal(late), "cancelled", True, "info")  # e.g. a deferred run's late action
    tracing.action(terminal(late), "persist_failed", False, "warn")
    tracing.turn_ended(late, None)
    tracing.open_request(fired(late))
    tracing.action(terminal(late), "final_answer", True, "info")
    tracing.action(terminal(late), "final_answer", True, "info")  # a second terminal: no-op
    tracing.shutdown()
    tracing.shutdown()  # idempotent
    tracing.open_request(fired(uuid4().hex))  # after shutdown: ignored, never raises
    assert len(otlp.wait_for(lambda s: len(s) == 1)) == 1


def test_disabled_is_a_no_op_that_sends_nothing(otlp: OtlpReceiver) -> None:
    for tracing in (
        build_tracing(Otel(enabled=False, endpoint=otlp.endpoint), {}),
        build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {"OTEL_SDK_DISABLED": "true"}),
        Records(None, stderr=io.StringIO()).tracing,
    ):
        assert not tracing.enabled
        one_request(tracing, uuid4().hex)
        assert tracing.force_flush()
        tracing.shutdown()
        assert (tracing.exported_spans, tracing.dropped_spans) == (0, 0)
    time.sleep(0.7)  # longer than the batch delay: anything sent would have arrived
    assert otlp.spans() == [] and otlp.requests == []


def test_dead_collector_costs_nothing_and_counts_what_it_dropped(
    dead_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tracing = build_tracing(Otel(enabled=True, endpoint=dead_endpoint), {})
    started = time.perf_counter()
    for _ in range(200):
        one_request(tracing, uuid4().hex)
    assert time.perf_counter() - started < 1.0  # 1,000 spans: nothing waits for the collector
    tracing.force_flush(timeout=10)
    assert tracing.dropped_spans > 0 and tracing.exported_spans == 0
    started = time.perf_counter()
    tracing.shutdown()
    assert time.perf_counter() - started < 3.0  # bounded, not the SDK's 30 s
    assert tracing.dropped_spans == 1000
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once a minute at most
    assert warnings[0].name == "app.tracing" and "dropped" in warnings[0].getMessage()
    assert dead_endpoint in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


def test_shutdown_with_a_dead_collector_is_bounded(dead_endpoint: str) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=dead_endpoint), {})
    for _ in range(700):  # more than one export batch still queued at shutdown
        one_request(tracing, uuid4().hex)
    started = time.perf_counter()
    tracing.shutdown(timeout=1.0)
    assert time.perf_counter() - started < 2.5
    assert tracing.dropped_spans == 3500


def test_standard_env_vars_override_the_configured_endpoint(
    otlp: OtlpReceiver, dead_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")  # read by the SDK itself
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp.traces_url,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=bmo,authorization=Bearer%20abc",
        "OTEL_SERVICE_NAME": "bmo-test",
    }
    tracing = build_tracing(Otel(enabled=True, endpoint=dead_endpoint), env)
    assert tracing.endpoint == otlp.traces_url
    one_request(tracing, uuid4().hex)
    tracing.shutdown()
    spans = otlp.wait_for(lambda s: len(s) == 5)
    assert {s["resource"]["service.name"] for s in spans} == {"bmo-test"}
    headers = otlp.requests[0]["headers"]
    assert headers["x-team"] == "bmo" and headers["authorization"] == "Bearer abc"
    assert headers["content-encoding"] == "gzip"


def test_base_endpoint_env_var_gets_the_traces_path(otlp: OtlpReceiver, dead_endpoint: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint + "/"}
    tracing = build_tracing(Otel(enabled=True, endpoint=dead_endpoint), env)
    one_request(tracing, uuid4().hex)
    tracing.shutdown()
    assert len(otlp.wait_for(lambda s: len(s) == 5)) == 5
    assert otlp.requests[0]["path"] == "/v1/traces"


def test_grpc_protocol_exports_over_grpc() -> None:
    with OtlpGrpcReceiver() as grpc_otlp:
        tracing = build_tracing(Otel(enabled=True, endpoint=grpc_otlp.endpoint, protocol="grpc"), {})
        one_request(tracing, uuid4().hex)
        tracing.shutdown()
        spans = grpc_otlp.wait_for(lambda s: len(s) == 5)
    assert {s["name"] for s in spans} == {
        "openai_compat.chat_completions",
        "agent.turn",
        "gen_ai.chat",
        "tool.call",
    }


def test_records_are_the_seam(otlp: OtlpReceiver, tmp_path: Path) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    records = Records(tmp_path / "bmo.jsonl", stderr=io.StringIO(), tracing=tracing)
    assert records.tracing is tracing
    request_id = uuid4().hex
    records.fired(**fired(request_id))
    records.action(outcome="persist_failed", terminal=False, request_id=request_id, route="chat_completions")
    records.action(outcome="error_500", terminal=True, **terminal(request_id, 500, error="boom"))
    records.close()  # shuts tracing down: the span is exported
    (span,) = otlp.wait_for(lambda s: len(s) == 1)
    assert span["name"] == "openai_compat.chat_completions"
    assert [e["name"] for e in span["events"]] == ["persist_failed"]
    assert span["attributes"]["bmo.outcome"] == "error_500" and span["status"]["code"] == ERROR
    assert len((tmp_path / "bmo.jsonl").read_text().splitlines()) == 3  # records unchanged


class _Executor:
    """Takes commands and keeps them: the recorder and turn runner only execute."""

    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def execute(self, cmd: Any, *, durable: bool = False) -> tuple[()]:
        self.commands.append(cmd)
        return ()


def test_run_recorder_emits_model_and_tool_spans(otlp: OtlpReceiver) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    run_id = uuid4()
    recorder = RunRecorder(_Executor(), run_id, tracing, "ollama")  # type: ignore[arg-type]

    async def steps() -> None:
        await recorder.model_called(
            step=1, model="qwen", usage=Usage(5, 3), latency_ms=8.0, finish_reason="tool_calls"
        )
        call = ToolCall(id="c9", name="search", arguments="{}")
        await recorder.tool_called(step=1, call=call, result=ToolResult(ok=True, content="x"), duration_ms=2)

    asyncio.run(steps())
    tracing.shutdown()
    spans = by_name(otlp.wait_for(lambda s: len(s) == 2))
    chat = spans["gen_ai.chat"][0]["attributes"]
    assert chat["gen_ai.system"] == "ollama" and chat["gen_ai.request.model"] == "qwen"
    assert chat["bmo.request_id"] == run_id.hex and chat["bmo.step"] == 1
    tool = spans["tool.call"][0]["attributes"]
    assert tool["gen_ai.tool.name"] == "search" and tool["gen_ai.tool.call.id"] == "c9"


def test_turn_runner_wraps_the_turn_and_its_steps(otlp: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Demo\n")
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    policy = TurnPolicy(
        tool_policy="chat_only", allowed_tools=frozenset(), max_steps=8, show_tool_activity=True
    )
    registry = ToolRegistry(all_builtin_tools())
    runner = TurnRunner(_Executor(), lambda: registry, tmp_path, policy, None, tracing=tracing)  # type: ignore[arg-type]
    run_id = uuid4()
    model = ResolvedModel("bmo/local", LocalProvider(), "local")

    async def turn() -> list[Any]:
        messages = (ChatMessage("user", "read README.md"),)
        return [event async for event in runner.run(run_id, model, messages)]

    tracing.open_request(fired(run_id.hex))
    events = asyncio.run(turn())
    tracing.action(terminal(run_id.hex), "final_answer", True, "info")
    tracing.shutdown()
    assert type(events[-1]).__name__ == "Done"
    spans = by_name(otlp.wait_for(lambda s: "openai_compat.chat_completions" in {x["name"] for x in s}))
    (request,), (turn_span,) = spans["openai_compat.chat_completions"], spans["agent.turn"]
    assert turn_span["parent_span_id"] == request["span_id"]
    assert turn_span["attributes"]["bmo.outcome"] == "final_answer"
    assert turn_span["attributes"]["bmo.model"] == "bmo/local"
    assert len(spans["gen_ai.chat"]) >= 2
    assert {s["parent_span_id"] for s in spans["gen_ai.chat"] + spans["tool.call"]} == {turn_span["span_id"]}
    assert {s["attributes"]["gen_ai.system"] for s in spans["gen_ai.chat"]} == {"bmo"}
    assert spans["tool.call"][0]["attributes"]["gen_ai.tool.name"] == "read_file"


def test_turn_span_ends_when_the_turn_is_abandoned(otlp: OtlpReceiver, tmp_path: Path) -> None:
    tracing = build_tracing(Otel(enabled=True, endpoint=otlp.endpoint), {})
    policy = TurnPolicy(
        tool_policy="chat_only", allowed_tools=frozenset(), max_steps=8, show_tool_activity=True
    )
    runner = TurnRunner(_Executor(), lambda: ToolRegistry([]), tmp_path, policy, None, tracing=tracing)  # type: ignore[arg-type]
    run_id: UUID = uuid4()

    async def first_event_only() -> None:
        stream = runner.run(
            run_id, ResolvedModel("bmo/local", LocalProvider(), "local"), (ChatMessage("user", "hi"),)
        )
        await anext(stream)
        await stream.aclose()

    asyncio.run(first_event_only())
    tracing.shutdown()
    (turn_span,) = otlp.wait_for(lambda s: len(s) >= 1)
    assert turn_span["name"] == "agent.turn" and "bmo.outcome" not in turn_span["attributes"]


class _FailingExporter:
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.calls += 1
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_after_a_failed_export_batches_are_dropped_unsent_for_a_while() -> None:
    from app.tracing_sdk import CountingExporter, ExportStats

    inner = _FailingExporter()
    stats = ExportStats("http://nowhere/v1/traces")
    exporter = CountingExporter(inner, stats, cool_down_s=0.3)  # type: ignore[arg-type]
    batch: list[Any] = [object()] * 3
    exporter.export(batch)
    exporter.export(batch)  # within the cool-down: not sent, still counted
    assert (inner.calls, stats.dropped, stats.exported) == (1, 6, 0)
    time.sleep(0.35)
    exporter.export(batch)  # the collector is tried again
    assert (inner.calls, stats.dropped) == (2, 9)
