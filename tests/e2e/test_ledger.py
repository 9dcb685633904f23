"""HTTP -> command -> event store -> projection -> runs/posture, and the records."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.e2e.server import BmoServer

pytestmark = pytest.mark.both_stores  # the ledger is the same on SQLite and on PostgreSQL

UA = "ledger-test-client/1.0"


def chat(http: httpx.Client, text: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": "bmo/local", "stream": stream, "messages": [{"role": "user", "content": text}]}
    return http.post("/v1/chat/completions", json=body, headers={"User-Agent": UA})


def wait_for_records(server: BmoServer, request_id: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        mine = [r for r in server.records() if r.get("request_id") == request_id]
        if len(mine) >= count:
            return mine
        time.sleep(0.05)
    return [r for r in server.records() if r.get("request_id") == request_id]


def test_a_chat_request_lands_in_the_ledger_and_the_timeline(server: BmoServer, http: httpx.Client) -> None:
    before = http.get("/v1/openai-compat/posture").json()
    response = chat(http, "read README.md")
    request_id = response.headers["x-request-id"]
    answer = response.json()["choices"][0]["message"]["content"]

    runs = http.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
    run = next(r for r in runs if r["request_id"] == request_id)
    assert run["outcome"] == "final_answer"
    assert run["status_code"] == 200
    assert run["model"] == "bmo/local" and run["stream"] is False
    assert run["client_ua"] == UA
    assert run["completion_tokens"] > 0 and run["elapsed_ms"] > 0

    timeline = http.get(f"/v1/openai-compat/runs/{request_id}/events").json()["data"]
    types = [e["type"] for e in timeline]
    assert types == [
        "Fired",
        "Started",
        "ModelCalled",
        "ToolCalled",
        "ModelCalled",
        "ContentAppended",
        "Finished",
    ] or types == [
        "Fired",
        "Started",
        "ModelCalled",
        "ToolCalled",
        "ContentAppended",
        "ModelCalled",
        "Finished",
    ]
    assert [e["version"] for e in timeline] == list(range(1, len(timeline) + 1))
    tool = next(e for e in timeline if e["type"] == "ToolCalled")["data"]
    assert tool["name"] == "read_file" and tool["ok"] is True and tool["args_digest"].startswith("sha256:")
    replayed = "".join(e["data"]["text"] for e in timeline if e["type"] == "ContentAppended")
    assert replayed == answer  # enough to replay the stream exactly
    assert timeline[-1]["data"]["outcome"] == "final_answer"

    after = http.get("/v1/openai-compat/posture").json()
    assert after["routes"]["chat_completions"] == before["routes"].get("chat_completions", 0) + 1
    assert {"user_agent": UA, "count": 1} in after["top_user_agents"]
    assert after["ledger"]["runs"] > before["ledger"]["runs"]
    assert any(
        o["request_id"] == request_id and o["outcome"] == "final_answer" for o in after["recent_outcomes"]
    )

    records = wait_for_records(server, request_id, 2)
    fired = [r for r in records if r["msg"] == "openai_compat.fired"]
    actions = [r for r in records if r["msg"] == "openai_compat.action" and r["terminal"]]
    assert len(fired) == 1 and len(actions) == 1
    assert fired[0]["route"] == "chat_completions" and fired[0]["model"] == "bmo/local"
    assert fired[0]["client_ua"] == UA and fired[0]["tool_policy"] == "chat_only"
    assert actions[0]["outcome"] == "final_answer" and actions[0]["status_code"] == 200
    assert set(fired[0]) >= {
        "time",
        "level",
        "msg",
        "request_id",
        "session_id",
        "route",
        "tool_policy",
        "ambiguity_action",
        "model",
        "stream",
        "is_session_reuse",
        "client_ua",
    }


def test_streamed_run_replays_exactly_and_follow_streams_the_timeline(http: httpx.Client) -> None:
    raw = chat(http, "search for TODO", stream=True)
    request_id = raw.headers["x-request-id"]
    streamed = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in raw.text.split("\n\n")
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    with http.stream("GET", f"/v1/openai-compat/runs/{request_id}/events", params={"follow": "true"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.read().decode().split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    events = [json.loads(b[6:]) for b in blocks[:-1]]
    assert events[-1]["type"] == "Finished"
    assert "".join(e["data"]["text"] for e in events if e["type"] == "ContentAppended") == streamed


def test_failures_are_recorded_once_each(server: BmoServer, http: httpx.Client) -> None:
    cases = [
        (
            httpx.post(server.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"}),
            "auth_failed",
            401,
        ),
        (http.post("/v1/chat/completions", content=b"{oops"), "invalid_request", 400),
        (http.get("/v1/nowhere"), "invalid_request", 404),
    ]
    for response, outcome, status in cases:
        assert response.status_code == status
        request_id = response.headers["x-request-id"]
        records = wait_for_records(server, request_id, 2)
        assert [r["msg"] for r in records] == ["openai_compat.fired", "openai_compat.action"]
        assert records[1]["outcome"] == outcome and records[1]["status_code"] == status
        assert records[1]["error"]
        assert server.token not in json.dumps(records)
    runs = http.get("/v1/openai-compat/runs", params={"outcome": "auth_failed"}).json()["data"]
    assert any(r["status_code"] == 401 for r in runs)


def test_runs_pagination_and_filters(http: httpx.Client) -> None:
    for _ in range(3):
        chat(http, "hello")
    page1 = http.get("/v1/openai-compat/runs", params={"limit": 2, "route": "chat_completions"}).json()
    assert len(page1["data"]) == 2 and page1["next_cursor"]
    page2 = http.get(
        "/v1/openai-compat/runs",
        params={"limit": 2, "route": "chat_completions", "cursor": page1["next_cursor"]},
    ).json()
    ids1 = {r["request_id"] for r in page1["data"]}
    assert page2["data"] and not ids1 & {r["request_id"] for r in page2["data"]}
    started = [r["started_at"] for r in page1["data"] + page2["data"]]
    assert started == sorted(started, reverse=True)


def drop_read_models(server: BmoServer) -> None:
    url = server.extra_env.get("BMO_STORE_URL")
    if url:  # PostgreSQL: the read models are tables beside the events
        from app.projections.pg_db import reset_pg_read_models

        reset_pg_read_models(url)
        return
    (server.data_dir / "read_models.db").unlink()
    for suffix in ("-wal", "-shm"):
        (server.data_dir / f"read_models.db{suffix}").unlink(missing_ok=True)


def test_restart_keeps_the_ledger_and_rebuilds_after_the_read_models_are_deleted(
    make_server: Callable[..., BmoServer],
) -> None:
    first = make_server()
    client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key=first.token, max_retries=0)
    client.chat.completions.create(model="bmo/local", messages=[{"role": "user", "content": "list files"}])
    client.chat.completions.create(
        model="bmo/local", messages=[{"role": "user", "content": "hello"}], stream=False
    )

    def snapshot(server: BmoServer) -> tuple[list[dict], dict]:
        with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
            runs = h.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
            posture = h.get("/v1/openai-compat/posture").json()
        return runs, {k: posture[k] for k in ("routes", "top_user_agents")} | {
            "ledger": posture["ledger"]["runs"]
        }

    runs_before, _ = snapshot(first)
    first.stop()
    second = make_server(data_dir=first.data_dir)
    runs_after, posture_after = snapshot(second)
    assert runs_after == runs_before
    second.stop()

    drop_read_models(first)
    third = make_server(data_dir=first.data_dir)
    runs_rebuilt, posture_rebuilt = snapshot(third)
    assert runs_rebuilt == runs_before
    # the rebuilt counts equal the originals plus the two snapshot reads of the second server
    assert posture_rebuilt["routes"]["chat_completions"] == posture_after["routes"]["chat_completions"]
    assert posture_rebuilt["ledger"] >= posture_after["ledger"]
