"""kill -9 with more open runs than the ledger keeps: every one is swept, every session freed.

The ledger keeps the newest `ledger_capacity` runs. Runs still open must never
be pruned: the startup sweep finds open runs in the ledger, so a pruned open
run would stay open forever and keep its session busy.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import httpx

from tests.e2e.server import BmoServer

OPEN_RUNS = 3
CONFIG = '[options.openai_compat]\ntool_policy = "auto_approve"\nledger_capacity = 1\n'


def chat(server: BmoServer, text: str, session: str) -> httpx.Response:
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": text}]}
    headers = {**server.headers, "X-BMO-Session-Id": session}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def run_events(h: httpx.Client, request_id: str) -> list[str]:
    return [e["type"] for e in h.get(f"/v1/openai-compat/runs/{request_id}/events").json()["data"]]


def test_kill_9_with_more_open_runs_than_ledger_capacity(make_server: Callable[..., BmoServer]) -> None:
    server = make_server(config_text=CONFIG)
    body = {"model": "bmo/local", "stream": True, "messages": [{"role": "user", "content": "run `sleep 30`"}]}
    clients = [httpx.Client(base_url=server.base_url, timeout=60) for _ in range(OPEN_RUNS)]
    killed: list[str] = []
    lines = []
    streams = []  # held open until the kill (a dropped context manager closes its stream)
    for i, client in enumerate(clients):
        headers = {**server.headers, "X-BMO-Session-Id": f"sweep-{i}"}
        streams.append(client.stream("POST", "/v1/chat/completions", json=body, headers=headers))
        response = streams[-1].__enter__()
        killed.append(response.headers["x-request-id"])
        lines.append(response.iter_lines())  # kept: a collected iterator closes its stream
        next(lines[-1])  # the run is admitted and streaming before the next one starts
    done = chat(server, "list files", "sweep-finished")  # newest run: the only one capacity 1 keeps
    assert done.status_code == 200
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    for client in clients:
        client.close()

    restarted = make_server(data_dir=server.data_dir, config_text=CONFIG)
    assert f"recovered {OPEN_RUNS} interrupted run" in restarted.stderr()
    with httpx.Client(base_url=restarted.base_url, headers=restarted.headers, timeout=30) as h:
        for request_id in killed:  # each interrupted run ended exactly once
            row = h.get(f"/v1/openai-compat/runs/{request_id}")
            if row.status_code == 200:  # the ledger may prune it once it has ended
                assert (row.json()["outcome"], row.json()["error"]) == ("error_500", "interrupted")
                assert run_events(h, request_id).count("Finished") == 1
    for i in range(OPEN_RUNS):  # no session is left busy: a new turn runs at once
        again = chat(restarted, "list files", f"sweep-{i}")
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["message"]["content"]
