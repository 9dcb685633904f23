"""Many instances, one truth: several real `bmo serve` processes on one PostgreSQL store.

Each instance has its own port and data dir (its log, nothing else); they
share the database and the workspace, as replicas behind Open WebUI do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.e2e.test_sessions import config, content_of, in_thread, post, runs
from tests.fakes.openai_upstream import FakeOpenAI, Slow, Text, ToolCalls

Instances = Callable[..., list[BmoServer]]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    """One scripted upstream for every instance (its replies are consumed in order)."""
    with FakeOpenAI(models=("fake-model", "other-model")) as fake:
        yield fake


@pytest.fixture
def instances(make_server: Callable[..., BmoServer], postgres_url: str, tmp_path: Path) -> Instances:
    """`instances(n, config_text=...)`: n servers on one fresh database."""

    def start(n: int, **kwargs: Any) -> list[BmoServer]:
        return [
            make_server(data_dir=tmp_path / f"data-{i}", extra_env={"BMO_STORE_URL": postgres_url}, **kwargs)
            for i in range(n)
        ]

    return start


def get(server: BmoServer, path: str, **params: Any) -> Any:
    response = httpx.get(f"{server.base_url}{path}", params=params, headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def run_events(server: BmoServer, request_id: str) -> list[dict]:
    return get(server, f"/v1/openai-compat/runs/{request_id}/events")["data"]


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def outcome(server: BmoServer, request_id: str) -> str | None:
    row = next((r for r in runs(server) if r["request_id"] == request_id), None)
    return row["outcome"] if row else None


def test_racers_on_every_instance_get_one_run_and_the_rest_queue_in_order(
    instances: Instances, upstream: FakeOpenAI
) -> None:
    servers = instances(3, config_text=config(upstream, "max_queue_depth = 8"))
    upstream.script(Slow(1.5, Text("first")), *(Text(f"queued {i}") for i in range(5)))
    barrier = threading.Barrier(6)

    def racer(i: int) -> httpx.Response:
        barrier.wait()
        return post(servers[i % 3], f"race {i}", session="shared")

    threads = [in_thread(lambda i=i: racer(i)) for i in range(6)]
    for thread, _ in threads:
        thread.join(60)
    responses = [out["value"] for _, out in threads]
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409, 409, 409]
    errors = [r.json()["error"] for r in responses if r.status_code == 409]
    assert sorted(e["position"] for e in errors) == [1, 2, 3, 4, 5]
    queued = [e["run_id"] for e in sorted(errors, key=lambda e: e["position"])]
    # every queued run ends, each started by whichever instance freed the session
    for run_id in queued:
        wait_until(lambda run_id=run_id: outcome(servers[0], run_id) == "final_answer", what=run_id)

    def started_at(run_id: str) -> datetime:
        events = run_events(servers[1], run_id)
        return datetime.fromisoformat(next(e["at"] for e in events if e["type"] == "Started"))

    starts = [started_at(run_id) for run_id in queued]
    assert starts == sorted(starts), "queued runs started out of queue order"
    finished = [run_events(servers[2], run_id)[-1] for run_id in queued]
    assert all(e["type"] == "Finished" for e in finished)
    ends = [datetime.fromisoformat(e["at"]) for e in finished]
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False)), "two ran at once"


def test_a_question_asked_on_one_instance_is_answered_through_another(
    instances: Instances, upstream: FakeOpenAI, workspace: Path
) -> None:
    asker, answerer = instances(2, config_text=config(upstream))
    upstream.script(
        ToolCalls([("call_w", "write_file", '{"path": "shared.txt", "content": "from A"}')]),
        Text("Written."),
    )
    thread, out = in_thread(lambda: post(asker, "write shared.txt", session="perm"))
    pending = wait_until(lambda: get(answerer, "/v1/permissions")["data"], what="question on B")
    question = pending[0]
    assert question["tool"] == "write_file"
    answered = httpx.post(
        f"{answerer.base_url}/v1/permissions/{question['question_id']}",
        json={"decision": "allow"},
        headers=answerer.headers,
        timeout=30,
    )
    assert answered.status_code == 200 and answered.json()["status"] == "allowed"
    thread.join(60)
    assert content_of(out["value"]).endswith("Written.")
    assert (workspace / "shared.txt").read_text() == "from A"
    assert get(asker, "/v1/permissions")["data"] == []


def test_every_instance_serves_the_same_ledger_posture_and_live_timeline(
    instances: Instances, upstream: FakeOpenAI
) -> None:
    a, b = instances(2, config_text=config(upstream))
    upstream.script(Text("one"), Text("two"), Slow(1.5, Text("streamed slowly", chunks=4)))
    post(a, "one", session="l-1")
    post(b, "two", session="l-2")
    thread, out = in_thread(lambda: post(a, "three", session="l-3", stream=True))
    running = wait_until(
        lambda: next((r for r in runs(b, route="chat_completions") if r["outcome"] is None), None),
        what="A's open run listed by B",
    )
    # B follows A's live run to its end
    with (
        httpx.Client(base_url=b.base_url, headers=b.headers, timeout=60) as h,
        h.stream("GET", f"/v1/openai-compat/runs/{running['request_id']}/events?follow=true") as r,
    ):
        assert r.status_code == 200
        body = r.read().decode()
    assert '"type":"Finished"' in body.replace(" ", "") and body.endswith("data: [DONE]\n\n")
    thread.join(60)
    assert content_of(out["value"]) == "streamed slowly"

    def chat_ledger(server: BmoServer) -> list[dict]:
        return runs(server, route="chat_completions")

    assert len(chat_ledger(a)) == 3 and chat_ledger(a) == chat_ledger(b)
    pa, pb = get(a, "/v1/openai-compat/posture"), get(b, "/v1/openai-compat/posture")
    assert pa["routes"]["chat_completions"] == pb["routes"]["chat_completions"] == 3
    assert pa["recent_outcomes"] == pb["recent_outcomes"]
    assert pa["bind"]["addr"] != pb["bind"]["addr"]  # what belongs to one process stays its own
    ready = [get(server, "/readyz")["checks"] for server in (a, b)]
    assert [r["store_backend"] for r in ready] == ["postgresql", "postgresql"]
    assert ready[0]["instance"] and ready[0]["instance"] != ready[1]["instance"]


def test_a_run_streaming_on_one_instance_is_resumed_through_another(
    instances: Instances, upstream: FakeOpenAI
) -> None:
    a, b = instances(2, config_text=config(upstream))
    upstream.script(Slow(1.5, Text("a long answer in pieces", chunks=5)))
    thread, out = in_thread(lambda: post(a, "go", session="r-1", stream=True))
    run = wait_until(lambda: next(iter(runs(b, route="chat_completions")), None), what="run on B")
    assert run["outcome"] is None  # still streaming on A
    resumed = post(
        b,
        "",
        session="r-1",
        stream=True,
        headers={"X-BMO-Resume-Run-Id": run["request_id"]},
        messages=[{"role": "user", "content": "resume"}],
    )
    thread.join(60)
    assert resumed.status_code == 200
    assert content_of(resumed) == content_of(out["value"]) == "a long answer in pieces"
    assert resumed.text.endswith("data: [DONE]\n\n")
