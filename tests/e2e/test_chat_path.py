"""The chat path's defects, by class, through a real `bmo serve` (issue 13 items 5, 6, 8, 9, 10 and
the suspected ones; issue 20's regenerate and edit).

The scripted upstream chooses the model's replies and tool calls; every client is real (httpx,
the official openai SDK) and every assertion is on what a client or the ledger sees.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.data import openwebui_tasks
from tests.e2e.server import BmoServer
from tests.e2e.test_sessions import config, content_of, in_thread, post, runs, wait_for_outcome
from tests.fakes.openai_upstream import FakeOpenAI, Slow, Text, ToolCalls


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model", "other-model")) as fake:
        yield fake


def events_of(server: BmoServer, request_id: str) -> list[dict]:
    return httpx.get(
        f"{server.base_url}/v1/openai-compat/runs/{request_id}/events", headers=server.headers, timeout=30
    ).json()["data"]


def wait_until(predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def pending_questions(server: BmoServer) -> list[dict]:
    return httpx.get(f"{server.base_url}/v1/permissions", headers=server.headers, timeout=30).json()["data"]


# ----------------------------------------------------------------- item 8: resume ids


@pytest.mark.parametrize(
    "resume_id",
    [
        "-" * 36,
        "0123456789abcdef0123456789abcdef----",
        "garbage",
        "f" * 31,
        "a" * 200,
        "é".encode() * 18,
        b"\xff" * 36,
        "",
        "{" * 36,
        "00000000-0000-0000-0000-00000000000g",
    ],
)
@pytest.mark.parametrize("session", ["s-resume", None])
def test_an_unparsable_resume_id_is_run_not_found_never_5xx(
    server: BmoServer, resume_id: str | bytes, session: str | None
) -> None:
    headers: dict[str, Any] = {**server.headers, "X-BMO-Resume-Run-Id": resume_id}
    if session:
        headers["X-BMO-Session-Id"] = session
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": "resume"}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    if resume_id.strip() == "" if isinstance(resume_id, str) else False:
        assert response.status_code == 200  # no resume asked for: an ordinary turn
        return
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["code"] in ("run_not_found", "invalid_resume_id")
    assert error["param"] == "X-BMO-Resume-Run-Id"


# ------------------------------------------------- item 9: tool entries of any shape


ODD_TOOLS: list[list[Any]] = [
    [{"type": "web_search_preview"}],
    [{"type": "function", "name": "flat_fn", "parameters": {"type": "object"}}],
    [{"type": "function", "function": {}}],
    [{"type": "file_search", "vector_store_ids": ["x"]}],
    ["not an object"],
    [None, 3, []],
    [{"type": "function", "function": {"name": ""}}],
]


@pytest.mark.parametrize("tools", ODD_TOOLS)
def test_chat_only_ignores_tool_entries_whatever_their_shape(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, tools: list[Any]
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(Text("plain answer"))
    body = {"model": "up/fake-model", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    assert content_of(response) == "plain answer"
    offered = {t["function"]["name"] for t in upstream.requests[-1]["body"].get("tools") or []}
    assert "flat_fn" not in offered  # chat_only never offers the client's tools


@pytest.mark.parametrize("tools", ODD_TOOLS)
def test_auto_approve_drops_unknown_tool_kinds_and_notes_them(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, tools: list[Any]
) -> None:
    server = make_server(config_text=config(upstream, 'tool_policy = "auto_approve"'))
    upstream.script(Text("plain answer"))
    good = {"type": "function", "function": {"name": "client_fn", "parameters": {"type": "object"}}}
    body = {
        "model": "up/fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [*tools, good],
    }
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    offered = {t["function"]["name"] for t in upstream.requests[-1]["body"].get("tools") or []}
    assert "client_fn" in offered  # the well-formed definition is still offered
    events = events_of(server, wait_for_outcome(server, response.headers["x-request-id"])["request_id"])
    ignored = [e["data"] for e in events if e["type"] == "ClientToolsIgnored"]
    assert len(ignored) == 1 and len(ignored[0]["entries"]) == len(tools)


# ------------------------------------------------- item 6: the model rule on every path


def advertised_only_fake(upstream: FakeOpenAI, policy: str = "reject") -> str:
    return (
        f'[options]\nmodel = "up/fake-model"\n[options.openai_compat]\nmodels = ["up/fake-model"]\n'
        f'model_override_policy = "{policy}"\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "k"\n'
        'models = ["fake-model", "other-model"]\n'
    )


def _task_body(model: str, stream: bool = False) -> dict:
    body = openwebui_tasks.body(openwebui_tasks.TITLE, stream=stream)
    return {**body, "model": model}


ENTRY_PATHS = ["plain", "session", "task_header", "task_message", "resume", "clarification"]


def _request(server: BmoServer, path: str, model: str, resume_run: str = "") -> httpx.Response:
    url = f"{server.base_url}/v1/chat/completions"
    headers = dict(server.headers)
    user = {"role": "user", "content": "what is in README.md?"}
    body: dict[str, Any] = {"model": model, "messages": [user]}
    if path == "session":
        headers["X-BMO-Session-Id"] = "s-rule"
    elif path == "task_header":
        headers["X-OpenWebUI-Task"] = "title_generation"
        headers["X-OpenWebUI-Chat-Id"] = "chat-rule"
        body = _task_body(model, stream=True)
    elif path == "task_message":
        headers["X-OpenWebUI-Chat-Id"] = "chat-rule"
        body = _task_body(model)
    elif path == "resume":
        headers["X-BMO-Session-Id"] = "s-rule"
        headers["X-BMO-Resume-Run-Id"] = resume_run
    elif path == "clarification":
        body["messages"] = [{"role": "user", "content": "fix it"}]
    return httpx.post(url, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("path", ENTRY_PATHS)
def test_every_entry_path_rejects_a_configured_but_not_advertised_model(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, path: str
) -> None:
    server = make_server(config_text=advertised_only_fake(upstream))
    first = post(server, "hello", session="s-rule")
    assert first.status_code == 200
    before = len(upstream.requests)
    response = _request(server, path, "up/other-model", first.headers["x-request-id"])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "model_override_rejected"
    assert all(r["body"]["model"] != "other-model" for r in upstream.requests[before:])
    row = wait_for_outcome(server, response.headers["x-request-id"])
    assert row["outcome"] == "model_override_rejected"
    unknown = _request(server, path, "nope/none", first.headers["x-request-id"])
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["task_header", "task_message"])
def test_a_task_never_binds_or_changes_the_sessions_model(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, path: str
) -> None:
    server = make_server(config_text=advertised_only_fake(upstream, "allow_ephemeral"))
    applied = _request(server, path, "up/other-model")  # the task comes first: chat-rule is new
    assert applied.status_code == 200, applied.text
    assert upstream.requests[-1]["body"]["model"] == "other-model"
    events = events_of(server, wait_for_outcome(server, applied.headers["x-request-id"])["request_id"])
    assert "ModelOverrideApplied" in [e["type"] for e in events]
    upstream.script(Text("main turn"))
    main = post(server, "hello", model=None, headers={"X-OpenWebUI-Chat-Id": "chat-rule"})
    assert content_of(main) == "main turn"
    assert upstream.requests[-1]["body"]["model"] == "fake-model"  # bound to the default, not the task's


def test_allow_ephemeral_on_a_new_session_does_not_bind_the_one_off_model(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=advertised_only_fake(upstream, "allow_ephemeral"))
    first = post(server, "hello", session="s-new-eph", model="up/other-model")
    assert first.status_code == 200
    assert upstream.requests[-1]["body"]["model"] == "other-model"
    post(server, "and again", session="s-new-eph", model=None)
    assert upstream.requests[-1]["body"]["model"] == "fake-model"


# --------------------------------------- items 5 and 10: non-stream disconnect, Cancelled


def _raw_post(server: BmoServer, body: dict, headers: dict[str, str]) -> socket.socket:
    """Send a request on a raw socket (so the test decides when the client goes away)."""
    payload = json.dumps(body).encode()
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{k}: {v}" for k, v in {**server.headers, **headers}.items()),
        "",
        "",
    ]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall("\r\n".join(lines).encode() + payload)
    return sock


def _request_id_of(server: BmoServer, session: str) -> str:
    rows = wait_until(lambda: [r for r in runs(server, session_id=session) if r["outcome"] is None])
    return rows[0]["request_id"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_while_a_permission_is_pending_cancels_its_run(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path, stream: bool
) -> None:
    server = make_server(config_text=config(upstream, "permission_timeout_s = 300"))
    target = workspace / "never.txt"
    upstream.script(ToolCalls([("w1", "write_file", json.dumps({"path": "never.txt", "content": "x"}))]))
    session = f"s-gone-{stream}"
    body = {"model": "up/fake-model", "stream": stream, "messages": [{"role": "user", "content": "write"}]}
    sock = _raw_post(server, body, {"X-BMO-Session-Id": session})
    wait_until(lambda: pending_questions(server))
    request_id = _request_id_of(server, session)
    sock.close()  # the client goes away while the question waits
    row = wait_for_outcome(server, request_id, timeout=30)
    assert (row["outcome"], row["status_code"]) == ("cancelled", 499)
    types = [e["type"] for e in events_of(server, request_id)]
    assert "Cancelled" in types and types.index("Cancelled") == types.index("Finished") - 1
    cancelled = next(e for e in events_of(server, request_id) if e["type"] == "Cancelled")["data"]
    assert cancelled["by"] == "client" and cancelled["reason"] == "client disconnected"
    assert cancelled["step"] == 1  # the model had been called once; the tool waited for approval
    assert not pending_questions(server)
    assert not target.exists()
    upstream.script(Text("retry admitted"))
    retry = post(server, "again", session=session)
    assert retry.status_code == 200 and content_of(retry) == "retry admitted"


def test_a_stream_cut_mid_answer_records_cancelled_before_finished(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream, 'tool_policy = "auto_approve"'))
    command = "sleep 60 & echo $! > child.pid; wait"
    upstream.script(ToolCalls([("s", "bash", json.dumps({"command": command}))]))
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "sleep"}]}
    headers = {**server.headers, "X-BMO-Session-Id": "s-cut"}
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        request_id = response.headers["x-request-id"]
        wait_until(lambda: (workspace / "child.pid").exists())
    assert wait_for_outcome(server, request_id)["outcome"] == "cancelled"
    types = [e["type"] for e in events_of(server, request_id)]
    assert types[-2:] == ["Cancelled", "Finished"]


# ------------------------------------------------------------- wire: usage, headers


def test_stream_chunks_carry_no_usage_unless_asked(server: BmoServer) -> None:
    body = {"model": "bmo/local", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    plain = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers)
    chunks = [json.loads(line[6:]) for line in plain.text.split("\n\n") if line.startswith("data: {")]
    assert chunks and all("usage" not in c for c in chunks)
    body["stream_options"] = {"include_usage": True}
    asked = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers)
    chunks = [json.loads(line[6:]) for line in asked.text.split("\n\n") if line.startswith("data: {")]
    assert [c for c in chunks if "usage" in c] == [chunks[-1]]
    assert chunks[-1]["usage"]["total_tokens"] >= 0 and chunks[-1]["choices"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 20_000},
        {f"X-Many-{i}": "b" * 1000 for i in range(80)},
        {"X-BMO-Session-Id": "s" * 40_000},
    ],
)
def test_oversized_headers_get_431_with_an_envelope(server: BmoServer, headers: dict[str, str]) -> None:
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": "hello"}]}
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers={**server.headers, **headers}
    )
    assert response.status_code == 431
    error = response.json()["error"]
    assert error["code"] == "headers_too_large" and "header" in error["message"]
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


# ------------------------------------------------------ issue 20: regenerate and edit


def test_regenerate_and_edit_follow_the_clients_history(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=server.token,
        max_retries=0,
        default_headers={"X-OpenWebUI-Chat-Id": "chat-regen"},
    )

    def ask(messages: list[dict], answer: str) -> tuple[str, list[tuple[str, str]]]:
        upstream.script(Text(answer))
        raw = client.chat.completions.with_raw_response.create(model="up/fake-model", messages=messages)
        assert raw.parse().choices[0].message.content == answer
        sent = [(m["role"], m["content"]) for m in upstream.requests[-1]["body"]["messages"]]
        return raw.headers["x-request-id"], [s for s in sent if s[0] != "system"]

    def diverged(request_id: str) -> list[dict]:
        wait_for_outcome(server, request_id)
        return [e["data"] for e in events_of(server, request_id) if e["type"] == "HistoryDiverged"]

    u1 = {"role": "user", "content": "what is in README.md?"}
    first, sent = ask([u1], "answer one")
    assert sent == [("user", u1["content"])] and not diverged(first)
    # a normal follow-up: the client's history agrees with the session
    u2 = {"role": "user", "content": "and in src/main.py?"}
    history = [u1, {"role": "assistant", "content": "answer one"}, u2]
    second, sent = ask(history, "answer two")
    assert sent == [("user", u1["content"]), ("assistant", "answer one"), ("user", u2["content"])]
    assert not diverged(second)
    # regenerate the second answer: the same history again; the model must not see "answer two"
    regen, sent = ask(history, "answer two, regenerated")
    assert sent == [("user", u1["content"]), ("assistant", "answer one"), ("user", u2["content"])]
    assert diverged(regen) == [{"kept": 3, "dropped": 1, "client_messages": 3}]
    # edit the first message: the session follows the edit, nothing of the old branch remains
    edited = {"role": "user", "content": "what is in pyproject.toml?"}
    edit, sent = ask([edited], "answer edited")
    assert sent == [("user", edited["content"])]
    assert diverged(edit) == [{"kept": 0, "dropped": 4, "client_messages": 1}]
    # and the next turn of the edited branch agrees with the session again
    u3 = {"role": "user", "content": "thanks, now list src"}
    follow, sent = ask([edited, {"role": "assistant", "content": "answer edited"}, u3], "answer three")
    assert sent == [("user", edited["content"]), ("assistant", "answer edited"), ("user", u3["content"])]
    assert not diverged(follow)
    # regenerate the very first answer of the branch: only the client's first message is sent
    again, sent = ask([edited], "answer edited again")
    assert sent == [("user", edited["content"])]
    assert diverged(again) == [{"kept": 1, "dropped": 3, "client_messages": 1}]


def test_tool_activity_shown_to_the_client_is_not_a_divergence(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(ToolCalls([("l1", "list_dir", "{}")]), Text("two entries"))
    u1 = {"role": "user", "content": "list the files"}
    headers = {"X-OpenWebUI-Chat-Id": "chat-activity"}
    first = post(server, "", messages=[u1], headers=headers, stream=True)
    shown = content_of(first)  # what Open WebUI stores: the activity block, then the answer
    assert "<details" in shown and shown.endswith("two entries")
    upstream.script(Text("more"))
    second = post(
        server,
        "",
        messages=[u1, {"role": "assistant", "content": shown}, {"role": "user", "content": "more?"}],
        headers=headers,
    )
    row = wait_for_outcome(server, second.headers["x-request-id"])
    assert "HistoryDiverged" not in [e["type"] for e in events_of(server, row["request_id"])]
    sent = [(m["role"], m["content"]) for m in upstream.requests[-1]["body"]["messages"]]
    assert sent == [("user", "list the files"), ("assistant", "two entries"), ("user", "more?")]


# ------------------------------------- item 4: admission racing a release, real server

OFFSETS_MS = (-120, -60, -20, 0, 10, 25, 50, 100, 200, 350)


def test_a_request_racing_the_end_of_the_active_run_is_never_stranded(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    """Send B at offsets around the moment run A ends (its release), one session per offset.

    Whatever the interleaving, B is either admitted at once (200) or queued (409) and then
    run to its end; the session is free afterwards and resume of the queued run completes.
    """
    server = make_server(config_text=config(upstream, "max_queue_depth = 8"))
    for offset in OFFSETS_MS:
        session = f"s-race-{offset}"
        upstream.script(Slow(0.4, Text("answer A")))
        seen = len(upstream.requests)
        a_thread, a_out = in_thread(lambda session=session: post(server, "question A", session=session))
        wait_until(lambda seen=seen: len(upstream.requests) > seen)
        time.sleep(max(0.0, 0.4 + offset / 1000))  # an interleaving to try, not a synchronisation
        b = post(server, "question B", session=session)
        a_thread.join(60)
        assert a_out["value"].status_code == 200
        assert b.status_code in (200, 409), (offset, b.text)
        if b.status_code == 409:
            queued = b.json()["error"]["run_id"]
            row = wait_for_outcome(server, queued, timeout=30)
            assert row["outcome"] == "final_answer", (offset, row)
            resumed = post(
                server,
                "",
                session=session,
                headers={"X-BMO-Resume-Run-Id": queued},
                messages=[{"role": "user", "content": "resume"}],
            )
            assert resumed.status_code == 200, (offset, resumed.text)
        third = post(server, "question C", session=session)
        assert third.status_code == 200, (offset, third.text)


def test_an_ambiguous_message_to_a_busy_session_waits_its_turn(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    """The clarification is a run of the session: queued behind the busy run, in transcript order."""
    server = make_server(config_text=config(upstream))
    upstream.script(Slow(1.0, Text("answer A")))
    seen = len(upstream.requests)
    a_thread, a_out = in_thread(lambda: post(server, "what is in README.md?", session="s-vague"))
    wait_until(lambda: len(upstream.requests) > seen)
    vague = post(server, "fix it", session="s-vague")
    assert vague.status_code == 409, vague.text
    queued = vague.json()["error"]["run_id"]
    a_thread.join(60)
    assert content_of(a_out["value"]) == "answer A"
    row = wait_for_outcome(server, queued)
    assert row["outcome"] == "clarification"
    upstream.script(Text("answer C"))
    assert content_of(post(server, "README.md please", session="s-vague")) == "answer C"
    sent = [(m["role"], m["content"]) for m in upstream.requests[-1]["body"]["messages"]]
    assert [role for role, _ in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert [text for _, text in sent][:3] == ["what is in README.md?", "answer A", "fix it"]
    assert sent[3][1].startswith("What would you like me to fix?")


# ------------------------------------------- issue 20: text for the model stays with it


def test_a_denied_tool_shows_the_user_what_happened_not_the_models_instructions(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream, "permission_timeout_s = 1"))
    upstream.script(
        ToolCalls([("w1", "write_file", json.dumps({"path": "denied.txt", "content": "x"}))]),
        Text("I could not write it."),
    )
    response = post(server, "write denied.txt", stream=True)
    shown = content_of(response)
    assert "not approved" in shown.lower() or "denied" in shown.lower()
    for instruction in ("Do not retry", "tell the user"):
        assert instruction not in shown
    told = upstream.requests[-1]["body"]["messages"][-1]
    assert told["role"] == "tool" and "Do not retry" in told["content"]
    assert not (workspace / "denied.txt").exists()
