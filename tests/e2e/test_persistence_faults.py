"""Append failures never fail a response; kill -9 leaves nothing half-done."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.server import BmoServer

REQUESTS = 12


def chat(server: BmoServer, text: str = "hello", **body: object) -> httpx.Response:
    payload = {"model": "bmo/local", "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(
        f"{server.base_url}/v1/chat/completions", json=payload, headers=server.headers, timeout=60
    )


def posture(server: BmoServer) -> dict:
    return httpx.get(f"{server.base_url}/v1/openai-compat/posture", headers=server.headers, timeout=30).json()


def wait_until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_injected_append_failures_under_load(make_server: Callable[..., BmoServer], tmp_path: Path) -> None:
    switch = tmp_path / "faults-on"
    server = make_server(extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)})
    assert "BMO_TEST_APPEND_FAULTS is set" in server.stderr()  # the seam is never silent
    switch.touch()
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(chat(server).status_code)) for _ in range(REQUESTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * REQUESTS
    degraded = posture(server)
    assert degraded["label"] == "degraded — persist failures"
    assert degraded["ledger"]["degraded"] is True
    assert "injected append fault" in degraded["ledger"]["last_persist_error"]
    assert any(
        r["msg"] == "openai_compat.action" and r["outcome"] == "persist_failed" for r in server.records()
    )
    switch.unlink()
    wait_until(lambda: posture(server)["label"] == "enabled (chat_only)")
    rows = httpx.get(
        f"{server.base_url}/v1/openai-compat/runs",
        params={"route": "chat_completions", "limit": 500},
        headers=server.headers,
    ).json()["data"]
    assert len(rows) == REQUESTS and all(r["outcome"] == "final_answer" for r in rows)
    wait_until(lambda: any(r["msg"] == "openai_compat.persistence_recovered" for r in server.records()))
    recovered = [r for r in server.records() if r["msg"] == "openai_compat.persistence_recovered"]
    assert recovered and recovered[0]["flushed_events"] > 0 and recovered[0]["overflowed_events"] == 0


def dump(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in tables}


def test_kill_9_during_streams_then_restart(make_server: Callable[..., BmoServer], tmp_path: Path) -> None:
    config = '[options.openai_compat]\ntool_policy = "auto_approve"\n'
    server = make_server(config_text=config)
    body = {"model": "bmo/local", "stream": True, "messages": [{"role": "user", "content": "run `sleep 30`"}]}
    responses: list[httpx.Response] = []
    clients = [httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) for _ in range(3)]
    streams = [c.stream("POST", "/v1/chat/completions", json=body) for c in clients]
    for stream in streams:
        responses.append(stream.__enter__())
    chat(server, "list files")  # one finished run too
    time.sleep(0.5)
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    for client in clients:
        client.close()
    restarted = make_server(data_dir=server.data_dir, config_text=config)
    assert "recovered 3 interrupted run" in restarted.stderr()
    with httpx.Client(base_url=restarted.base_url, headers=restarted.headers) as h:
        rows = h.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
        for row in rows:
            events = h.get(f"/v1/openai-compat/runs/{row['request_id']}/events").json()["data"]
            assert [e["type"] for e in events].count("Finished") == 1
    killed = {r.headers["x-request-id"] for r in responses}
    outcomes = {r["request_id"]: (r["outcome"], r["error"]) for r in rows}
    assert all(outcomes[k] == ("error_500", "interrupted") for k in killed)
    restarted.stop()
    db = restarted.data_dir / "read_models.db"
    live = dump(db)
    env = {**os.environ, "BMO_GLOBAL_DATA": str(restarted.data_dir)}
    subprocess.run(
        [sys.executable, "-m", "app", "projections", "rebuild"], env=env, check=True, capture_output=True
    )
    assert dump(db) == live
    assert json.dumps(live)  # the dump is plain data
