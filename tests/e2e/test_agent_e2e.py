"""The real agent loop behind a real server, against a scripted OpenAI-protocol upstream."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import BreakMidStream, Empty, Error, FakeOpenAI, Text, ToolCalls


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


def config(upstream: FakeOpenAI, extra: str = "", policy: str = "chat_only") -> str:
    return (
        f'[options.openai_compat]\ntool_policy = "{policy}"\npermission_timeout_s = 20\n{extra}\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-upstream-secret"\n'
        'models = ["fake-model"]\nmax_retries = 2\ntimeout_s = 5\n'
    )


def sdk(server: BmoServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.token, max_retries=0, timeout=60)


def ask(server: BmoServer, text: str, **kw: Any) -> Any:
    return sdk(server).chat.completions.create(
        model="up/fake-model", messages=[{"role": "user", "content": text}], **kw
    )


def ledger(server: BmoServer, request_id: str) -> tuple[dict, list[dict]]:
    """The run's ledger row and timeline once it has ended (read models are eventually consistent)."""
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
        while True:
            runs = h.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
            row = next((r for r in runs if r["request_id"] == request_id), None)
            if (row and row["outcome"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        events = h.get(f"/v1/openai-compat/runs/{request_id}/events").json()["data"]
    assert row is not None, f"run {request_id} never reached the ledger"
    return row, events


def tool_messages(request: dict) -> list[dict]:
    return [m for m in request["body"]["messages"] if m["role"] == "tool"]


def test_multi_step_run_reads_a_file_and_answers_with_summed_usage(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(
        ToolCalls([("call_1", "read_file", '{"path": "README.md"}')], usage=(100, 7)),
        Text("The README is about a demo project.", usage=(150, 9)),
    )
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="up/fake-model", messages=[{"role": "user", "content": "what is this project?"}]
    )
    completion = raw.parse()
    message = completion.choices[0].message
    assert "demo project" in (message.content or "")
    assert not message.tool_calls  # chat_only: tools are internal
    assert '<details type="tool_calls"' in (message.content or "")  # activity is visible
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (250, 16)
    assert len(upstream.requests) == 2
    (tool_msg,) = tool_messages(upstream.requests[1])
    assert "TODO: write docs" in tool_msg["content"] and tool_msg["tool_call_id"] == "call_1"
    assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-upstream-secret"
    offered = {t["function"]["name"] for t in upstream.requests[0]["body"]["tools"]}
    assert {"read_file", "list_dir", "search", "write_file", "edit_file", "bash"} <= offered
    run, events = ledger(server, raw.headers["x-request-id"])
    assert run["outcome"] == "final_answer" and run["model"] == "up/fake-model"
    assert (run["prompt_tokens"], run["completion_tokens"]) == (250, 16)
    steps = [e for e in events if e["type"] in ("ModelCalled", "ToolCalled")]
    assert [e["type"] for e in steps] == ["ModelCalled", "ToolCalled", "ModelCalled"]
    assert steps[0]["data"]["prompt_tokens"] == 100 and steps[1]["data"]["name"] == "read_file"
    assert "sk-upstream-secret" not in json.dumps(events) + server.stderr()


def test_upstream_429_is_retried(make_server: Callable[..., BmoServer], upstream: FakeOpenAI) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(Error(429, "slow down", headers={"Retry-After": "0"}), Text("fine"))
    assert ask(server, "hello").choices[0].message.content == "fine"
    assert len(upstream.requests) == 2


def test_upstream_errors_become_envelopes(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(Error(400, "max_tokens is too large"))
    with pytest.raises(openai.BadRequestError) as bad:
        ask(server, "hello")
    assert "max_tokens is too large" in bad.value.message
    upstream.script(Error(500), Error(500), Error(500))
    with pytest.raises(openai.InternalServerError) as failed:
        ask(server, "hello")
    assert failed.value.status_code == 502 and "up" in failed.value.message


def test_upstream_break_mid_stream_ends_with_an_error_chunk(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(BreakMidStream("partial answer"))
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as h:
        response = h.post("/v1/chat/completions", json=body)
    blocks = [b for b in response.text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    last = json.loads(blocks[-2][6:])
    assert "error" in last and last["error"]["message"]
    streamed = "".join(
        json.loads(b[6:])["choices"][0]["delta"].get("content", "")
        for b in blocks[:-2]
        if json.loads(b[6:]).get("choices")
    )
    assert streamed == "partial answer"  # what arrived before the break was delivered
    run, _ = ledger(server, response.headers["x-request-id"])
    assert run["outcome"] == "error_500" and run["status_code"] >= 500


def test_chat_only_never_returns_tool_calls_for_client_tools(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(ToolCalls([("call_9", "get_time", "{}")]), Text("I cannot tell the time."))
    completion = ask(
        server, "what time is it?", tools=[{"type": "function", "function": {"name": "get_time"}}]
    )
    choice = completion.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    offered = {t["function"]["name"] for t in upstream.requests[0]["body"]["tools"]}
    assert "get_time" not in offered
    assert "unknown tool" in tool_messages(upstream.requests[1])[0]["content"].lower()


def test_auto_approve_round_trip_with_the_sdk(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream, policy="auto_approve"))
    tools = [{"type": "function", "function": {"name": "get_time", "description": "now", "parameters": {}}}]
    upstream.script(ToolCalls([("call_t", "get_time", '{"tz": "UTC"}')]), Text("It is noon."))
    client = sdk(server)
    messages: list[Any] = [{"role": "user", "content": "what time is it?"}]
    stream = client.chat.completions.create(
        model="up/fake-model", messages=messages, tools=tools, stream=True
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and all(d.index is not None for d in deltas)
    assert deltas[0].function.name == "get_time" and deltas[0].id == "call_t"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    arguments = "".join(d.function.arguments or "" for d in deltas)
    messages += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"},
    ]
    final = client.chat.completions.create(model="up/fake-model", messages=messages, tools=tools)
    assert final.choices[0].message.content == "It is noon."
    assert tool_messages(upstream.requests[1]) == [
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"}
    ]
    # non-streaming pass-through too
    upstream.script(ToolCalls([("call_u", "get_time", "{}")]))
    passed = client.chat.completions.create(model="up/fake-model", messages=messages[:1], tools=tools)
    assert passed.choices[0].finish_reason == "tool_calls"
    assert passed.choices[0].message.tool_calls[0].function.name == "get_time"


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for_question(server: BmoServer, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = httpx.get(server.base_url + "/v1/permissions", headers=server.headers).json()["data"]
        if pending:
            return pending[0]
        time.sleep(0.1)
    raise AssertionError("no permission question appeared")


@pytest.mark.both_stores
def test_a_mutating_tool_asks_and_an_answer_allows_it(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(
        ToolCalls([("call_w", "write_file", '{"path": "notes/out.txt", "content": "hello"}')]),
        Text("Written."),
    )
    thread, out = run_in_thread(lambda: ask(server, "write hello to notes/out.txt"))
    question = wait_for_question(server)
    assert question["tool"] == "write_file" and "notes/out.txt" in question["arguments"]
    assert not (workspace / "notes" / "out.txt").exists()
    answered = httpx.post(
        f"{server.base_url}/v1/permissions/{question['question_id']}",
        json={"decision": "allow"},
        headers=server.headers,
    )
    assert answered.status_code == 200 and answered.json()["status"] == "allowed"
    thread.join(30)
    assert out["value"].choices[0].message.content.endswith("Written.")
    assert (workspace / "notes" / "out.txt").read_text() == "hello"
    again = httpx.post(
        f"{server.base_url}/v1/permissions/{question['question_id']}",
        json={"decision": "deny"},
        headers=server.headers,
    )
    assert again.status_code == 409
    bad = httpx.post(
        f"{server.base_url}/v1/permissions/nope", json={"decision": "maybe"}, headers=server.headers
    )
    assert bad.status_code == 400


@pytest.mark.both_stores
def test_an_unanswered_question_is_denied_after_the_timeout(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(
        config_text=config(upstream).replace("permission_timeout_s = 20", "permission_timeout_s = 1")
    )
    upstream.script(
        ToolCalls([("call_b", "bash", '{"command": "touch made.txt"}')]), Text("It needs approval.")
    )
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="up/fake-model", messages=[{"role": "user", "content": "touch made.txt"}]
    )
    assert raw.parse().choices[0].message.content.endswith("It needs approval.")
    assert not (workspace / "made.txt").exists()
    assert "permission denied" in tool_messages(upstream.requests[1])[0]["content"]
    run, events = ledger(server, raw.headers["x-request-id"])
    decided = [e["data"] for e in events if e["type"] == "PermissionDecided"]
    assert decided == [
        {
            "question_id": decided[0]["question_id"],
            "decision": "deny",
            "decided_by": "timeout",
            "requester": "",
            "decided_via": "timeout",
            "digest": decided[0]["digest"],
            "scope": "once",
        }
    ]
    asked = next(e["data"] for e in events if e["type"] == "PermissionAsked")
    assert decided[0]["digest"] == asked["digest"] and len(asked["digest"]) == 64
    assert run["outcome"] == "final_answer"


def test_allowed_tools_and_auto_approve_need_no_question(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream) + '\n[permissions]\nallowed_tools = ["write_file"]\n')
    upstream.script(ToolCalls([("c", "write_file", '{"path": "a.txt", "content": "x"}')]), Text("ok"))
    ask(server, "write a.txt")
    assert (workspace / "a.txt").read_text() == "x"


def test_recovery_failed_is_recorded(make_server: Callable[..., BmoServer], upstream: FakeOpenAI) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(ToolCalls([("c1", "list_dir", "{}")]), Empty(), Empty())
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="up/fake-model", messages=[{"role": "user", "content": "list"}]
    )
    assert "no answer" in raw.parse().choices[0].message.content
    run, _ = ledger(server, raw.headers["x-request-id"])
    assert run["outcome"] == "recovery_failed"
    records = server.records_for(raw.headers["x-request-id"], 2)
    action = next(r for r in records if r["msg"] == "openai_compat.action")
    assert action["outcome"] == "recovery_failed" and action["level"] == "warn"


def test_kubectl_retries_exhausted_is_k8s_retry_failed(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(
        ToolCalls([("k", "kubectl", '{"verb": "get", "args": ["pods"]}')]), Text("No cluster reachable.")
    )
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="up/fake-model", messages=[{"role": "user", "content": "list pods"}]
    )
    run, events = ledger(server, raw.headers["x-request-id"])
    assert run["outcome"] == "k8s_retry_failed"
    assert [e["data"]["ok"] for e in events if e["type"] == "ToolCalled"] == [False]
    assert "3" in tool_messages(upstream.requests[1])[0]["content"]  # names the tries


def test_the_same_call_three_times_is_a_loop(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    same = ("c", "list_dir", '{"path": "."}')
    upstream.script(ToolCalls([same]), ToolCalls([same]), ToolCalls([same]), Text("Stopping."))
    ask(server, "list forever")
    assert "loop detected" in tool_messages(upstream.requests[3])[-1]["content"]


def test_path_escapes_are_refused(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", tmp_path / "workspace" / "link.txt")
    server = make_server(config_text=config(upstream))
    upstream.script(
        ToolCalls(
            [
                ("a", "read_file", '{"path": "../secret.txt"}'),
                ("b", "read_file", '{"path": "link.txt"}'),
                ("c", "read_file", '{"path": "/etc/passwd"}'),
            ]
        ),
        Text("refused"),
    )
    ask(server, "read secrets")
    results = tool_messages(upstream.requests[1])
    assert len(results) == 3
    assert all(r["content"].startswith("error:") for r in results)
    assert "top secret" not in json.dumps(results) and "root:" not in json.dumps(results)


def test_a_cancelled_stream_kills_the_tool_process(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream, policy="auto_approve"))
    command = "sleep 60 & echo $! > child.pid; wait"
    upstream.script(ToolCalls([("s", "bash", json.dumps({"command": command}))]), Text("never"))
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "sleep"}]}
    with (
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 15
        while not (workspace / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    # leaving the block closed the connection mid-stream
    pid = int((workspace / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child process {pid} survived the cancelled run")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        run, _ = ledger(server, request_id)
        if run["outcome"]:
            break
        time.sleep(0.1)
    assert run["outcome"] == "cancelled"


def mcp_config(upstream: FakeOpenAI) -> str:
    return config(upstream) + (
        '\n[mcp.fake]\ntype = "stdio"\ncommand = "python"\nargs = ["-m", "tests.fakes.mcp_server"]\n'
        'env = { PYTHONPATH = "${PYTHONPATH}" }\n'
        'timeout = 10\ndisabled_tools = ["slow"]\n'
    )


def test_the_agent_calls_a_real_mcp_server_tool(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=mcp_config(upstream))
    upstream.script(ToolCalls([("m1", "mcp__fake__echo", '{"text": "hello from mcp"}')]), Text("Echoed."))
    assert ask(server, "echo via mcp").choices[0].message.content.endswith("Echoed.")
    offered = {t["function"]["name"] for t in upstream.requests[0]["body"]["tools"]}
    assert {"mcp__fake__echo", "mcp__fake__add", "mcp__fake__crash"} <= offered
    assert "mcp__fake__slow" not in offered  # disabled_tools
    assert tool_messages(upstream.requests[1])[0]["content"] == "hello from mcp"


def test_a_crashed_mcp_server_is_a_clear_tool_error(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    allow = '\n[permissions]\nallowed_tools = ["mcp__fake__crash"]\n'  # a mutating MCP tool
    server = make_server(config_text=mcp_config(upstream) + allow)
    upstream.script(ToolCalls([("m1", "mcp__fake__crash", "{}")]), Text("The tool server died."))
    started = time.monotonic()
    completion = ask(server, "crash it")
    assert time.monotonic() - started < 10  # never a hung run
    assert completion.choices[0].message.content.endswith("The tool server died.")
    result = tool_messages(upstream.requests[1])[0]["content"]
    assert result.startswith("error:") and "fake" in result and "unavailable" in result


def test_bmo_local_runs_a_shell_command_through_the_real_bash_tool(
    make_server: Callable[..., BmoServer],
) -> None:
    server = make_server(config_text='[options.openai_compat]\ntool_policy = "auto_approve"\n')
    completion = sdk(server).chat.completions.create(
        model="bmo/local", messages=[{"role": "user", "content": "run `echo hello-from-bash`"}]
    )
    content = completion.choices[0].message.content or ""
    assert "hello-from-bash" in content and "exit code 0" in content.lower().replace("status", "code")
