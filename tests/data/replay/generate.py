"""Write the replay fixture: drive a real `bmo serve`, keep its event store and read models.

Run once per fixture version (never by the suite), from the repo root:

    python -m tests.data.replay.generate

It covers every event kind a real server produces today: chat with tools,
clarification (TurnNoted), an Open WebUI task, model override rejected, model
not found, requester ignored, permission asked/allowed and asked/denied,
queue + resume, upstream errors, a client disconnect (its outcome is whatever the
server decides today), an append-fault incident
(PersistenceRecovered), and a kill -9 with an active and a queued run swept on
restart (Finished interrupted, QueuedRunDropped). CancelRun has no caller in
the server today, so `Cancelled` is absent. The expected rows are a fresh
full replay, checked here against the server's own live projection.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from app.events.store import EventStore
from app.projections.db import read_db_path
from app.projections.runner import ProjectionRunner
from tests.data import openwebui_tasks
from tests.data.replay.replay import FIXTURE_DIR, dump_read_models, replay, write_expected
from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import BreakMidStream, Error, FakeOpenAI, Slow, Text, ToolCalls


def config(upstream: FakeOpenAI, extra: str = "") -> str:
    return (
        f'[options.openai_compat]\ntool_policy = "chat_only"\npermission_timeout_s = 60\n{extra}\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "k"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 10\n'
    )


def post(
    server: BmoServer, text: str, model: str = "bmo/local", session: str = "", **kw: Any
) -> httpx.Response:
    headers = {**server.headers, **kw.pop("headers", {})}
    if session:
        headers["X-BMO-Session-Id"] = session
    body = {"model": model, "messages": [{"role": "user", "content": text}], **kw}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def wait(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()))
    thread.start()
    return thread, out


def answer_question(server: BmoServer, upstream: FakeOpenAI, tool_call: Any, decision: str) -> None:
    upstream.script(ToolCalls([tool_call]), Text(f"Answer after {decision}."))
    thread, out = in_thread(lambda: post(server, "change a file", model="up/fake-model", session="s-perm"))

    def pending() -> list[dict]:
        return httpx.get(f"{server.base_url}/v1/permissions", headers=server.headers).json()["data"]

    question = wait(pending)[0]
    answered = httpx.post(
        f"{server.base_url}/v1/permissions/{question['question_id']}",
        json={"decision": decision},
        headers=server.headers,
    )
    assert answered.status_code == 200, answered.text
    thread.join(60)
    assert out["value"].status_code == 200


def drive(server: BmoServer, upstream: FakeOpenAI, switch: Path) -> None:
    assert post(server, "list files", session="s-chat").status_code == 200
    assert post(server, "fix it", session="s-chat").status_code == 200  # clarification: TurnNoted
    title = openwebui_tasks.CASES[0][1]
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=title, headers=server.headers).is_success
    assert post(server, "other model", model="up/fake-model", session="s-chat").status_code == 400
    assert post(server, "no such model", model="nope/none").status_code == 400
    ignored = post(server, "read README.md", headers={"X-Auth-Request-User": "mallory"})
    assert ignored.status_code == 200
    answer_question(
        server, upstream, ("call_w", "write_file", '{"path": "out.txt", "content": "hi"}'), "allow"
    )
    answer_question(server, upstream, ("call_b", "bash", '{"command": "touch x"}'), "deny")
    # queue and resume
    upstream.script(Slow(1.0, Text("first answer")), Text("second answer"))
    count = len(upstream.requests)
    first, _ = in_thread(lambda: post(server, "first", model="up/fake-model", session="s-q"))
    wait(lambda: len(upstream.requests) > count)
    busy = post(server, "second", model="up/fake-model", session="s-q")
    assert busy.status_code == 409, busy.text
    first.join(60)
    resumed = post(
        server,
        "resume",
        model="up/fake-model",
        session="s-q",
        headers={"X-BMO-Resume-Run-Id": busy.json()["error"]["run_id"]},
        stream=True,
    )
    assert resumed.status_code == 200
    # upstream failures
    upstream.script(Error(500), BreakMidStream("partial"))
    assert post(server, "fails", model="up/fake-model").status_code >= 500
    assert post(server, "breaks", model="up/fake-model", stream=True).status_code == 200
    # a client that disconnects mid-run
    upstream.script(Slow(5.0, Text("too late")))
    count = len(upstream.requests)
    body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "wait"}]}
    with (
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        gone = response.headers["x-request-id"]
        wait(lambda: len(upstream.requests) > count)
    wait(lambda: any(r.get("request_id") == gone and r.get("terminal") for r in server.records()))
    # an append-fault incident
    switch.touch()
    assert post(server, "list files").status_code == 200
    switch.unlink()
    wait(lambda: any(r["msg"] == "openai_compat.persistence_recovered" for r in server.records()))


def quietly(fn: Any, *args: Any, **kw: Any) -> Any:
    """Call, and swallow the error of a connection the kill -9 breaks."""
    try:
        return fn(*args, **kw)
    except httpx.HTTPError as exc:
        return exc


def crash_with_a_queued_run(server: BmoServer, upstream: FakeOpenAI) -> None:
    upstream.script(Slow(60.0, Text("never")))
    count = len(upstream.requests)
    active, _ = in_thread(lambda: quietly(post, server, "long", model="up/fake-model", session="s-kill"))
    wait(lambda: len(upstream.requests) > count)
    assert post(server, "queued", model="up/fake-model", session="s-kill").status_code == 409
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    active.join(30)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bmo-replay-"))
    workspace = root / "workspace"
    (workspace / ".git").mkdir(parents=True)
    (workspace / "README.md").write_text("# Demo project\n")
    switch = root / "faults-on"
    env = {"BMO_TEST_APPEND_FAULTS": str(switch), "BMO_REQUESTER_TRUSTED_PROXIES": "10.9.9.9"}
    with FakeOpenAI(models=("fake-model",)) as upstream:
        kw: dict[str, Any] = {"workspace": workspace, "data_dir": root / "data", "extra_env": env}
        server = BmoServer(config_text=config(upstream), **kw).start()
        drive(server, upstream, switch)
        crash_with_a_queued_run(server, upstream)
        ephemeral = config(upstream, 'model_override_policy = "allow_ephemeral"')
        restarted = BmoServer(config_text=ephemeral, **kw)
        restarted.start()  # sweeps the crash
        assert "recovered 2 interrupted run" in restarted.stderr(), restarted.stderr()
        upstream.script(Text("overridden"))
        assert post(restarted, "use up", model="up/fake-model", session="s-chat").status_code == 200
        restarted.stop()
    events = FIXTURE_DIR / "events.db"
    events.unlink(missing_ok=True)
    with sqlite3.connect(root / "data" / "events.db") as conn:
        conn.execute("VACUUM INTO ?", (str(events),))
    store = EventStore(root / "data" / "events.db")  # the live projector may stop a step behind
    ProjectionRunner(store, read_db_path(root / "data"), ledger_capacity=10_000).catch_up()
    store.close()
    live = dump_read_models(root / "data" / "read_models.db")
    replayed = replay(events, root / "replayed")
    assert replayed == live, "a full replay differs from the server's live projection"
    write_expected(replayed)
    shutil.rmtree(root)
    print(f"wrote {events} ({events.stat().st_size} bytes) and expected rows")


if __name__ == "__main__":
    main()
