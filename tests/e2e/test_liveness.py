"""Liveness on one PostgreSQL store: leases decide whose runs are closed, and when.

Timing is read from the record, not guessed: the store's lease rows give each
instance's last heartbeat and expiry, and each run's `Finished` event gives the
moment a survivor closed it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.server import BmoServer
from tests.e2e.test_multi_instance import get, run_events, wait_until
from tests.e2e.test_sessions import config, post
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls

LEASE_S = 2.0


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


@pytest.fixture
def pair(
    make_server: Callable[..., BmoServer], postgres_url: str, tmp_path: Path, upstream: FakeOpenAI
) -> tuple[BmoServer, BmoServer]:
    text = config(upstream, 'tool_policy = "auto_approve"') + f"[options.store]\nlease_s = {LEASE_S}\n"
    return tuple(  # type: ignore[return-value]
        make_server(
            data_dir=tmp_path / f"data-{i}", extra_env={"BMO_STORE_URL": postgres_url}, config_text=text
        )
        for i in range(2)
    )


def lease_rows(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(
            "SELECT instance_id, addr, heartbeat_at, expires_at FROM bmo_instances"
        ).fetchall()
    return {row["addr"]: row for row in rows}


def sleeper(seconds: int) -> ToolCalls:
    return ToolCalls([("s", "bash", f'{{"command": "sleep {seconds}"}}')])


def open_stream(server: BmoServer, session: str) -> tuple[httpx.Client, httpx.Response, str]:
    """A streaming chat request left open (its response headers read, its body not yet)."""
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "sleep"}]}
    headers = {**server.headers, "X-BMO-Session-Id": session}
    client = httpx.Client(base_url=server.base_url, headers=headers, timeout=60)
    response = client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    return client, response, response.headers["x-request-id"]


def ledger_row(server: BmoServer, request_id: str) -> dict | None:
    rows = get(server, "/v1/openai-compat/runs", limit=100)["data"]
    return next((r for r in rows if r["request_id"] == request_id), None)


def finished_at(server: BmoServer, request_id: str) -> datetime:
    events = run_events(server, request_id)
    ends = [e for e in events if e["type"] == "Finished"]
    assert len(ends) == 1, [(e["version"], e["type"], e["at"]) for e in events]
    assert ends[0]["data"]["outcome"] == "error_500" and ends[0]["data"]["error"] == "interrupted"
    return datetime.fromisoformat(ends[0]["at"])


def test_kill_9_survivor_closes_its_runs_after_the_lease_and_not_before(
    pair: tuple[BmoServer, BmoServer], upstream: FakeOpenAI, postgres_url: str
) -> None:
    a, b = pair
    upstream.script(sleeper(60), sleeper(60), Text("queued run ran on the survivor"))
    streams = [open_stream(a, "k-1"), open_stream(a, "k-2")]
    killed = [request_id for _, _, request_id in streams]
    wait_until(lambda: all(ledger_row(b, r) for r in killed), what="A's runs listed by B")
    queued = post(b, "after the active one", session="k-1")  # B's client waits behind A's run
    assert queued.status_code == 409
    queued_run = queued.json()["error"]["run_id"]
    # A is alive: two whole leases pass and B touches none of its runs
    time.sleep(2 * LEASE_S)  # a window in which nothing may happen (not synchronisation)
    assert all(ledger_row(b, r)["outcome"] is None for r in killed)

    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    killed_at = datetime.now().astimezone()
    for client, _, _ in streams:
        client.close()
    wait_until(lambda: all(ledger_row(b, r)["outcome"] for r in killed), timeout=30, what="A's runs closed")
    lease = lease_rows(postgres_url)[f"127.0.0.1:{a.port}"]
    for request_id in killed:
        closed = finished_at(b, request_id)
        assert closed >= lease["expires_at"], "closed while A's lease was still valid"
        assert closed - killed_at < timedelta(seconds=2 * LEASE_S + 2), "not closed within the lease time"
    # the session is free again: the queued run was started by the survivor and ended
    wait_until(lambda: (ledger_row(b, queued_run) or {}).get("outcome") == "final_answer", what="queued run")
    assert get(b, "/v1/openai-compat/posture")["ledger"]["degraded"] is False


def test_a_paused_instance_finds_its_runs_closed_and_writes_no_second_terminal_event(
    pair: tuple[BmoServer, BmoServer], upstream: FakeOpenAI
) -> None:
    a, b = pair
    upstream.script(sleeper(4), Text("late answer that nobody may record"), Text("after the pause"))
    client, stream, request_id = open_stream(a, "p-1")
    wait_until(lambda: ledger_row(b, request_id), what="A's run listed by B")
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: ledger_row(b, request_id)["outcome"], timeout=30, what="B closes the paused run")
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    text = stream.read().decode()  # the stream ends once A resumes
    client.close()
    assert text.endswith("data: [DONE]\n\n")
    # the client is told its answer was not recorded (no clean `stop` after the fact)
    assert '"code":"run_closed_elsewhere"' in text.replace(" ", "")
    assert '"finish_reason":"stop"' not in text.replace(" ", "")
    finished_at(b, request_id)  # exactly one terminal event, B's
    # A's own late events were refused by the store; the ledger still says what B decided
    wait_until(lambda: httpx.get(f"{a.base_url}/readyz").status_code == 200, what="A ready again")
    row = ledger_row(a, request_id)
    assert row is not None and (row["outcome"], row["error"]) == ("error_500", "interrupted")
    late = [e for e in run_events(a, request_id) if "late answer" in str(e["data"])]
    assert late == []
    # A keeps serving (its lease renewed)
    assert post(a, "again", session="p-2").status_code == 200
