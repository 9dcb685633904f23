"""The loop's rails, driven by a scripted in-process provider (no I/O but tools)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from app.agent.loop import Approved, ClientToolCalls, Done, Refused, TextChunk, TurnSpec, run_turn
from app.agent.tools.base import Tool, ToolContext, ToolResult
from app.agent.tools.registry import ToolRegistry
from app.providers.base import (
    ChatMessage,
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSchema,
    Usage,
)


class Scripted:
    """Each call pops one reply: (text, [calls], finish_reason)."""

    name = "scripted"

    def __init__(self, *replies: tuple[str, list[ToolCall], str]) -> None:
        self.replies = list(replies)
        self.requests: list[ModelRequest] = []

    def models(self) -> tuple[str, ...]:
        return ("m",)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        text, calls, finish = self.replies.pop(0) if self.replies else ("", [], "stop")
        if text:
            yield TextDelta(text)
        for call in calls:
            yield ToolCallRequested(call)
        yield ModelFinished(finish, Usage(3, 2))

    async def aclose(self) -> None:
        pass


class Counter:
    schema = ToolSchema("count", "counts calls", {"type": "object"})

    def __init__(self, mutating: bool = False, result: ToolResult | None = None) -> None:
        self.mutating = mutating
        self.calls = 0
        self.seen: list[dict[str, Any]] = []
        self.result = result or ToolResult(ok=True, content="counted")

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.calls += 1
        self.seen.append(args)
        return self.result


class Kubectl(Counter):
    schema = ToolSchema("kubectl", "k8s", {"type": "object"})


class Sink:
    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = []
        self.tools: list[tuple[str, bool]] = []

    async def model_called(self, **kw: Any) -> None:
        self.models.append(kw)

    async def tool_called(self, *, step: int, call: ToolCall, result: ToolResult, duration_ms: float) -> None:
        self.tools.append((call.name, result.ok))


def call(name: str = "count", args: str = "{}", id: str = "c1") -> ToolCall:
    return ToolCall(id, name, args)


def run(provider: Scripted, tools: list[Tool], **kw: Any) -> tuple[list[Any], Sink]:
    sink = Sink()
    spec = TurnSpec(
        provider=provider,
        model="m",
        messages=(ChatMessage("user", "go"),),
        tools=ToolRegistry(tools),
        tool_context=ToolContext(Path("/tmp")),
        max_steps=kw.pop("max_steps", 25),
        **kw,
    )

    async def collect() -> list[Any]:
        return [e async for e in run_turn(spec, sink)]

    return asyncio.run(collect()), sink


def text_of(events: list[Any], activity: bool = False) -> str:
    return "".join(e.text for e in events if isinstance(e, TextChunk) and e.activity == activity)


def test_tool_then_answer_sums_usage_and_shows_activity() -> None:
    tool = Counter()
    events, sink = run(Scripted(("", [call()], "tool_calls"), ("done", [], "stop")), [tool])
    assert tool.calls == 1 and sink.tools == [("count", True)]
    assert text_of(events) == "done"
    assert '<details type="tool_calls" done="true" id="c1" name="count"' in text_of(events, activity=True)
    done = events[-1]
    assert isinstance(done, Done) and done.outcome == "final_answer"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 4)
    assert len(sink.models) == 2


def test_activity_can_be_hidden() -> None:
    events, _ = run(
        Scripted(("", [call()], "tool_calls"), ("ok", [], "stop")), [Counter()], show_tool_activity=False
    )
    assert text_of(events, activity=True) == ""


def test_empty_answer_after_tools_gets_one_recovery_prompt() -> None:
    provider = Scripted(("", [call()], "tool_calls"), ("", [], "stop"), ("recovered", [], "stop"))
    events, _ = run(provider, [Counter()])
    assert text_of(events) == "recovered" and events[-1].outcome == "final_answer"
    assert "answer my previous request" in provider.requests[2].messages[-1].content


def test_recovery_failed_when_the_model_stays_silent() -> None:
    provider = Scripted(("", [call()], "tool_calls"), ("", [], "stop"), ("", [], "stop"))
    events, _ = run(provider, [Counter()])
    assert events[-1].outcome == "recovery_failed"
    assert "returned no answer" in text_of(events)
    assert len(provider.requests) == 3


def test_length_is_continued_twice_at_most_and_never_past_a_client_limit() -> None:
    provider = Scripted(("a", [], "length"), ("b", [], "length"), ("c", [], "length"), ("d", [], "stop"))
    events, _ = run(provider, [])
    assert text_of(events) == "abc" and events[-1].finish_reason == "length"
    limited = Scripted(("a", [], "length"), ("b", [], "stop"))
    events, _ = run(limited, [], max_tokens=5)
    assert text_of(events) == "a" and len(limited.requests) == 1


def test_the_same_call_three_times_is_not_run_the_third_time() -> None:
    tool = Counter()
    provider = Scripted(*[("", [call(id=f"c{i}")], "tool_calls") for i in range(3)], ("stop now", [], "stop"))
    _, sink = run(provider, [tool])
    assert tool.calls == 2
    assert sink.tools[-1] == ("count", False)
    last_tool_message = provider.requests[3].messages[-1]
    assert last_tool_message.role == "tool" and "loop detected" in last_tool_message.content


def test_kubectl_exhaustion_without_later_success_is_k8s_retry_failed() -> None:
    failing = Kubectl(
        result=ToolResult(ok=False, content="error: no cluster", error_kind="k8s_retry_exhausted")
    )
    events, _ = run(
        Scripted(("", [call("kubectl")], "tool_calls"), ("cluster unreachable", [], "stop")), [failing]
    )
    assert events[-1].outcome == "k8s_retry_failed"
    assert text_of(events) == "cluster unreachable"


def test_client_tool_calls_are_passed_through_and_end_the_turn() -> None:
    client = ToolSchema("get_time", "client tool", {"type": "object"})
    provider = Scripted(("", [call("get_time", id="t1")], "tool_calls"))
    events, sink = run(provider, [Counter()], client_tools=(client,))
    assert isinstance(events[-2], ClientToolCalls) and events[-2].calls[0].name == "get_time"
    assert events[-1].finish_reason == "tool_calls"
    assert sink.tools == []  # never executed by the agent
    assert [t.name for t in provider.requests[0].tools] == ["count", "get_time"]


def test_a_denied_mutating_tool_is_not_run_and_the_model_is_told() -> None:
    tool = Counter(mutating=True)

    async def deny(c: ToolCall, t: Tool) -> AsyncIterator[TextChunk | Approved | Refused]:
        yield TextChunk("question shown", transient=True)
        yield Refused("error: permission denied for count", "Not run: denied.")

    provider = Scripted(("", [call()], "tool_calls"), ("I could not run it", [], "stop"))
    events, sink = run(provider, [tool], authorize=deny)
    assert tool.calls == 0 and sink.tools == [("count", False)]
    assert provider.requests[1].messages[-1].content == "error: permission denied for count"
    shown = text_of(events) + text_of(events, activity=True)
    assert "question shown" in shown and "Not run: denied." in shown  # the person's line
    assert "error: permission denied" not in shown  # the model's text stays with the model
    assert events[-1].outcome == "final_answer"


def test_an_approval_runs_exactly_the_approved_call_and_rechecks_its_digest() -> None:
    from app.agent.approval import arguments_digest

    tool = Counter(mutating=True)
    approved = call(args='{"n":2}')

    async def approve(c: ToolCall, t: Tool) -> AsyncIterator[TextChunk | Approved | Refused]:
        yield Approved(approved, arguments_digest("count", approved.arguments))

    async def tampered(c: ToolCall, t: Tool) -> AsyncIterator[TextChunk | Approved | Refused]:
        yield Approved(approved, arguments_digest("count", '{"n":1}'))

    provider = Scripted(("", [call(args='{"n": 2, "n": 2}')], "tool_calls"), ("ok", [], "stop"))
    run(provider, [tool], authorize=approve)
    assert tool.calls == 1 and tool.seen == [{"n": 2}]
    provider = Scripted(("", [call(args='{"n": 2}')], "tool_calls"), ("ok", [], "stop"))
    run(provider, [tool], authorize=tampered)
    assert tool.calls == 1  # a digest that does not match what would run: not run
    assert "differ from the ones approved" in provider.requests[1].messages[-1].content


def test_max_steps_bounds_the_loop() -> None:
    provider = Scripted(*[("", [call(args=f'{{"i": {i}}}')], "tool_calls") for i in range(10)])
    events, _ = run(provider, [Counter()], max_steps=3)
    assert len(provider.requests) == 3
    assert "max_steps = 3" in text_of(events) and events[-1].finish_reason == "length"
