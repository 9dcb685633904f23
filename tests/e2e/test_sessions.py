"""Sessions, queueing, resume, cancel, model binding, router, client tasks, identity."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.data import openwebui_tasks
from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Slow, Text, ToolCalls


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model", "other-model")) as fake:
        yield fake


def config(upstream: FakeOpenAI, extra: str = "") -> str:
    return (
        f'[options]\nmodel = "up/fake-model"\n[options.openai_compat]\n{extra}\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "k"\n'
        'models = ["fake-model", "other-model"]\n'
    )


def post(
    server: BmoServer,
    text: str,
    *,
    session: str | None = None,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    model: str | None = "up/fake-model",
    messages: list[dict] | None = None,
    timeout: float = 60,
) -> httpx.Response:
    all_headers = dict(server.headers)
    if session:
        all_headers["X-BMO-Session-Id"] = session
    all_headers.update(headers or {})
    body: dict[str, Any] = {"messages": messages or [{"role": "user", "content": text}], "stream": stream}
    if model:
        body["model"] = model
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers=all_headers, timeout=timeout
    )


def content_of(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("application/json"):
        return response.json()["choices"][0]["message"]["content"]
    return "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in response.text.split("\n\n")
        if line.startswith("data: {") and json.loads(line[6:]).get("choices")
    )


def runs(server: BmoServer, **params: str) -> list[dict]:
    return httpx.get(
        f"{server.base_url}/v1/openai-compat/runs", params={"limit": 100, **params}, headers=server.headers
    ).json()["data"]


def wait_for_outcome(server: BmoServer, request_id: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = next((r for r in runs(server) if r["request_id"] == request_id), None)
        if row and row["outcome"]:
            return row
        time.sleep(0.1)
    raise AssertionError(f"run {request_id} did not end")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.both_stores
def test_a_busy_session_queues_answers_409_and_the_queued_run_is_resumable(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(Slow(2.0, Text("first answer")), Text("second answer"))
    first_thread, first = in_thread(lambda: post(server, "first question", session="s-1"))
    deadline = time.monotonic() + 10
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = post(server, "second question", session="s-1")
    assert busy.status_code == 409
    assert busy.headers["retry-after"]
    error = busy.json()["error"]
    queued_run = error["run_id"]
    assert error == {
        "message": error["message"],
        "type": "session_busy",
        "code": "queued",
        "param": None,
        "run_id": queued_run,
        "position": 1,
        "session_id": "s-1",
    }
    first_thread.join(30)
    assert content_of(first["value"]) == "first answer"
    resumed = post(
        server,
        "",
        session="s-1",
        stream=True,
        headers={"X-BMO-Resume-Run-Id": queued_run},
        messages=[{"role": "user", "content": "resume"}],
    )
    assert resumed.status_code == 200 and content_of(resumed) == "second answer"
    assert resumed.text.endswith("data: [DONE]\n\n")
    # the queued run saw the first turn from the server transcript
    second_request = upstream.requests[1]["body"]["messages"]
    assert [m["content"] for m in second_request if m["role"] in ("user", "assistant")] == [
        "first question",
        "first answer",
        "second question",
    ]
    outcomes = {r["request_id"]: r["outcome"] for r in runs(server, route="chat_completions")}
    assert outcomes[first["value"].headers["x-request-id"]] == "final_answer"
    assert outcomes[busy.headers["x-request-id"]] == "queued"
    assert outcomes[queued_run] == "final_answer"
    assert outcomes[resumed.headers["x-request-id"]] == "resumed"
    # the session is free again
    upstream.script(Text("third answer"))
    assert content_of(post(server, "third", session="s-1")) == "third answer"


@pytest.mark.both_stores
def test_resume_after_the_end_replays_exactly_what_was_streamed(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(
        ToolCalls([("c1", "list_dir", "{}")]),
        Text("Here is the listing, described in several words.", chunks=5),
    )
    original = post(server, "describe the files", session="s-2", stream=True)
    run_id = original.headers["x-request-id"]
    replayed = post(
        server,
        "",
        session="s-2",
        stream=False,
        headers={"X-BMO-Resume-Run-Id": run_id},
        messages=[{"role": "user", "content": "again"}],
    )
    assert replayed.headers["content-type"].startswith("application/json")
    assert content_of(replayed) == content_of(original)
    other_session = post(
        server,
        "",
        session="s-other",
        headers={"X-BMO-Resume-Run-Id": run_id},
        messages=[{"role": "user", "content": "x"}],
    )
    assert other_session.status_code == 404  # runs are resumed from their own session only


@pytest.mark.both_stores
def test_queue_full_is_429(make_server: Callable[..., BmoServer], upstream: FakeOpenAI) -> None:
    server = make_server(config_text=config(upstream, "max_queue_depth = 1"))
    upstream.script(Slow(2.0, Text("a")), Text("b"))
    thread, _ = in_thread(lambda: post(server, "one", session="s-3"))
    deadline = time.monotonic() + 10
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert post(server, "two", session="s-3").status_code == 409
    full = post(server, "three", session="s-3")
    assert full.status_code == 429 and full.json()["error"]["code"] == "session_queue_full"
    thread.join(30)


@pytest.mark.parametrize("workers", [2])
@pytest.mark.both_stores
def test_one_active_run_per_session_across_workers(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workers: int
) -> None:
    server = make_server(config_text=config(upstream), extra_args=("--workers", str(workers)))
    for attempt in range(4):
        upstream.script(Slow(1.0, Text("a")), Slow(1.0, Text("b")))
        barrier = threading.Barrier(2)

        def racer(
            i: int, barrier: threading.Barrier = barrier, session: str = f"race-{attempt}"
        ) -> httpx.Response:
            barrier.wait()
            return post(server, f"race {i}", session=session)

        threads = [in_thread(lambda i=i: racer(i)) for i in range(2)]
        for thread, _ in threads:
            thread.join(60)
        statuses = sorted(out["value"].status_code for _, out in threads)
        assert statuses == [200, 409], statuses
        queued_run = next(out["value"] for _, out in threads if out["value"].status_code == 409).json()[
            "error"
        ]["run_id"]
        assert wait_for_outcome(server, queued_run)["outcome"] == "final_answer"


@pytest.mark.both_stores
def test_a_disconnected_stream_is_cancelled_and_frees_the_session(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream, 'tool_policy = "auto_approve"'))
    command = "sleep 60 & echo $! > child.pid; wait"
    upstream.script(ToolCalls([("s", "bash", json.dumps({"command": command}))]))
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "sleep"}]}
    headers = {**server.headers, "X-BMO-Session-Id": "s-cancel"}
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 15
        while not (workspace / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert wait_for_outcome(server, request_id)["outcome"] == "cancelled"
    upstream.script(Text("next one runs"))
    assert content_of(post(server, "next", session="s-cancel")) == "next one runs"


def test_model_binding_and_override_policies(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    assert post(server, "hello", session="s-bind").status_code == 200
    rejected = post(server, "hello again", session="s-bind", model="up/other-model")
    assert rejected.status_code == 400
    assert rejected.json()["error"]["code"] == "model_override_rejected"
    row = next(r for r in runs(server) if r["request_id"] == rejected.headers["x-request-id"])
    assert row["outcome"] == "model_override_rejected"
    missing = post(server, "hi", session="s-bind", model="nope/none")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "model_not_found"
    # no model named: the session's bound model is used
    upstream.script(Text("bound"))
    assert content_of(post(server, "which model?", session="s-bind", model=None)) == "bound"
    assert upstream.requests[-1]["body"]["model"] == "fake-model"


def test_allow_ephemeral_overrides_for_one_request(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream, 'model_override_policy = "allow_ephemeral"'))
    post(server, "hello", session="s-eph")
    applied = post(server, "use the other", session="s-eph", model="up/other-model")
    assert applied.status_code == 200
    assert upstream.requests[-1]["body"]["model"] == "other-model"
    request_id = applied.headers["x-request-id"]
    records = server.records_for(request_id, 3)
    assert [(r["msg"], r.get("outcome"), r.get("terminal")) for r in records] == [
        ("openai_compat.fired", None, None),
        ("openai_compat.action", "model_override_applied", False),
        ("openai_compat.action", "final_answer", True),
    ]
    post(server, "back to bound", session="s-eph", model=None)
    assert upstream.requests[-1]["body"]["model"] == "fake-model"  # the binding did not change


def test_ambiguity_router_asks_only_when_nothing_resolves_the_request(
    make_server: Callable[..., BmoServer],
) -> None:
    server = make_server()
    vague = post(server, "fix it", model="bmo/local")
    text = content_of(vague)
    assert "?" in text and "1." in text and "2." in text
    row = wait_for_outcome(server, vague.headers["x-request-id"])
    assert row["outcome"] == "clarification"
    events = httpx.get(
        f"{server.base_url}/v1/openai-compat/runs/{row['request_id']}/events", headers=server.headers
    ).json()["data"]
    assert "ModelCalled" not in [e["type"] for e in events]  # no agent run
    clear = post(server, "read README.md and summarise it", model="bmo/local")
    assert "Demo project" in content_of(clear)
    assert wait_for_outcome(server, clear.headers["x-request-id"])["outcome"] == "final_answer"


def test_research_mode_offers_no_mutating_tool(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream, 'ambiguity_action = "research"'))
    upstream.script(ToolCalls([("w", "write_file", '{"path": "x.txt", "content": "x"}')]), Text("Findings."))
    assert content_of(post(server, "make it better")).endswith("Findings.")
    offered = {t["function"]["name"] for t in upstream.requests[0]["body"]["tools"]}
    assert offered and not offered & {"write_file", "edit_file", "bash"}
    assert "unknown tool" in upstream.requests[1]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize(("name", "body", "key", "kind"), openwebui_tasks.CASES)
def test_open_webui_tasks_get_json_of_the_right_shape(
    server: BmoServer, name: str, body: dict, key: str, kind: type
) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    payload = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(payload[key], kind) and payload[key]
    row = wait_for_outcome(server, response.headers["x-request-id"])
    assert row["task"] and row["session_id"] == ""


def test_task_header_wins_even_for_a_stream_request(server: BmoServer) -> None:
    body = openwebui_tasks.body(openwebui_tasks.TAGS, stream=True)
    headers = {**server.headers, "X-OpenWebUI-Task": "tags_generation", "X-OpenWebUI-Chat-Id": "chat-1"}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"])["tags"], list)
    # no session was touched by the task
    assert wait_for_outcome(server, response.headers["x-request-id"])["task"] == "tags_generation"


def test_open_webui_chat_id_maps_to_a_session(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(Text("one"), Text("two"))
    chat_id = "6f1c0b2e-1111-4a2b-9c3d-aaaaaaaaaaaa"
    headers = {"X-OpenWebUI-Chat-Id": chat_id}
    post(server, "first", headers=headers)
    second = post(
        server,
        "",
        headers=headers,
        messages=[
            {"role": "user", "content": "first (edited by the client)"},
            {"role": "assistant", "content": "one"},
            {"role": "user", "content": "second"},
        ],
    )
    row = wait_for_outcome(server, second.headers["x-request-id"])
    assert row["session_id"] == chat_id and row["is_session_reuse"] is True
    # the client's history diverges from the transcript (an edited first message): the
    # session follows the client, and says so in the run's timeline
    sent = [(m["role"], m["content"]) for m in upstream.requests[1]["body"]["messages"]]
    assert sent == [("user", "first (edited by the client)"), ("assistant", "one"), ("user", "second")]
    events = httpx.get(
        f"{server.base_url}/v1/openai-compat/runs/{row['request_id']}/events", headers=server.headers
    ).json()["data"]
    diverged = [e["data"] for e in events if e["type"] == "HistoryDiverged"]
    assert diverged == [{"kept": 0, "dropped": 2, "client_messages": 3}]


@pytest.mark.parametrize(("trusted", "expect"), [("127.0.0.1", True), ("10.9.9.9", False)])
def test_identity_headers_only_from_trusted_proxies(
    make_server: Callable[..., BmoServer], trusted: str, expect: bool
) -> None:
    server = make_server(extra_env={"BMO_REQUESTER_TRUSTED_PROXIES": trusted})
    response = post(
        server,
        "hello",
        model="bmo/local",
        headers={
            "X-Auth-Request-User": "alice",
            "X-Auth-Request-Email": "alice@example.com",
        },
    )
    row = wait_for_outcome(server, response.headers["x-request-id"])
    events = httpx.get(
        f"{server.base_url}/v1/openai-compat/runs/{row['request_id']}/events", headers=server.headers
    ).json()["data"]
    if expect:
        assert json.loads(row["requester"]) == {"email": "alice@example.com", "user": "alice"}
        assert "RequesterIgnored" not in [e["type"] for e in events]
    else:
        assert row["requester"] == ""
        ignored = next(e for e in events if e["type"] == "RequesterIgnored")["data"]
        assert ignored["headers"] == ["x-auth-request-user", "x-auth-request-email"]
