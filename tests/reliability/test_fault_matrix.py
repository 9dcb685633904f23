"""The fault matrix: each fault injected into a real `bmo serve`, one test per row.

Every test checks what the client saw (status, content, a clean error, `[DONE]`),
that each run in the ledger has exactly one terminal event, and that bmo (and the
sessions it touched) recover afterwards. Upstream faults come from
`slow_stream_upstream.py` (a real TCP peer in its own process: RST, stalls,
malformed SSE), MCP faults from `tests/fakes/mcp_server.py`, store faults from the
`BMO_TEST_APPEND_FAULTS` seam (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import BmoServer, free_port
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls
from tests.reliability import harness as h
from tests.reliability.slow_stream_upstream import SlowStreamUpstream, expected_content

pytestmark = pytest.mark.reliability

Figures = Callable[[str, dict[str, Any]], None]
MODEL = "up1/fake-model"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[SlowStreamUpstream]:
    with SlowStreamUpstream(tmp_path) as up:
        yield up


def burst(server: BmoServer, specs: list[dict[str, Any]], timeout: float = 120) -> list[h.StreamResult]:
    """Run `stream_chat(**spec)` for every spec concurrently; bounded by `timeout`."""

    async def go() -> list[h.StreamResult]:
        async with h.client_session() as http:
            calls = [h.stream_chat(http, server, **{"model": MODEL, **spec}) for spec in specs]
            return await asyncio.gather(*calls)

    return asyncio.run(asyncio.wait_for(go(), timeout))


def ledger_by_id(server: BmoServer) -> dict[str, dict[str, Any]]:
    return {row["request_id"]: row for row in h.all_runs(server)}


def prefix(result: h.StreamResult, pieces: int) -> str:
    return expected_content(result.nonce, pieces)


def assert_one_terminal_each(server: BmoServer, results: list[h.StreamResult]) -> dict[str, dict]:
    """Every request is in the ledger, ended, with exactly one Finished in its stream."""
    ids = {r.request_id for r in results}
    assert all(ids), "a response without X-Request-Id"

    def ended() -> bool:
        rows = ledger_by_id(server)
        return all(i in rows and rows[i]["outcome"] for i in ids)

    h.wait_until(ended, timeout=20)  # a stream's terminal event may land just after [DONE]
    rows = ledger_by_id(server)
    terminals = h.terminal_counts(server.data_dir / "events.db")
    for request_id in ids:
        assert rows[request_id]["outcome"], rows[request_id]
        assert terminals.get(request_id) == 1, (request_id, terminals.get(request_id))
    return rows


def posture(server: BmoServer) -> dict[str, Any]:
    with h.api(server) as client:
        return client.get("/v1/openai-compat/posture").json()


# --------------------------------------------------------------- upstream faults


def test_upstream_connection_refused(
    make_server: Callable[..., BmoServer], tmp_path: Path, figures: Figures
) -> None:
    port = free_port()  # nothing listens here (yet)
    config = h.bmo_config({"up1": f"http://127.0.0.1:{port}/v1"}, max_retries=2)
    server = make_server(config_text=config)
    specs = [
        {"chunks": 3, "delay_ms": 0, "stream": i % 2 == 0, "session_id": f"refused-{i}" if i < 4 else ""}
        for i in range(20)
    ]
    started = time.monotonic()
    results = burst(server, specs, timeout=60)
    elapsed = time.monotonic() - started
    for r in results:
        assert r.status == 502 and r.error is not None, (r.status, r.error, r.exception)
        assert r.error["code"] == "upstream_unreachable" and "refused" in r.error["message"]
    assert elapsed < 15  # 3 attempts with 0.2 s / 0.4 s backoff, never a hang
    rows = assert_one_terminal_each(server, results)
    assert {(rows[r.request_id]["outcome"], rows[r.request_id]["status_code"]) for r in results} == {
        ("error_500", 502)
    }
    for r in results[:3]:
        assert [e["type"] for e in h.timeline(server, r.request_id)] == ["Fired", "Started", "Finished"]
    # the upstream comes up on that port: the same bmo recovers, sessions were released
    with SlowStreamUpstream(tmp_path, port=port):
        again = burst(server, [{"chunks": 3, "delay_ms": 10, "session_id": f"refused-{i}"} for i in range(4)])
    assert all(r.complete for r in again), [(r.status, r.error) for r in again]
    figures("fault_connection_refused", {"requests": len(results), "all_502": True, "seconds": elapsed})


def test_upstream_reset_mid_stream(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, figures: Figures
) -> None:
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}))
    specs = [{"chunks": 8, "delay_ms": 100, "extra": {"reset_after": 3}} for _ in range(40)]
    results = burst(server, specs)
    for r in results:
        assert r.status == 200 and r.done, (r.status, r.done, r.exception)
        assert r.content == prefix(r, 3)  # what arrived before the RST was delivered
        assert r.error is not None and r.error["code"] == "upstream_stream_broken", r.error
    rows = assert_one_terminal_each(server, results)
    assert {(rows[r.request_id]["outcome"], rows[r.request_id]["status_code"]) for r in results} == {
        ("error_500", 502)
    }
    for r in results[:5]:
        h.check_timeline(h.timeline(server, r.request_id))  # content: see the test below
    assert all(r.complete for r in burst(server, [{"chunks": 3, "delay_ms": 10}] * 5))
    figures("fault_reset_mid_stream", {"streams": len(results), "clients_got_partial_content": True})


def test_a_session_is_released_after_an_upstream_error_mid_stream(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}))
    sessions = [f"broken-{i}" for i in range(10)]
    # Fat transcripts (4 turns of 1 MB) make the release's read of the session stream take a
    # few ms, so a client closing on [DONE] always lands in the window (thin ones: ~30-90 %).
    for _ in range(4):
        fat = burst(
            server,
            [
                {"chunks": 1, "delay_ms": 0, "stream": False, "pad": 1_000_000, "session_id": s}
                for s in sessions
            ],
        )
        assert all(r.complete for r in fat), [(r.status, r.error) for r in fat]
    broken = {"chunks": 4, "delay_ms": 20, "extra": {"reset_after": 2}}
    failed = burst(server, [{**broken, "session_id": s} for s in sessions])
    assert all(r.status == 200 and r.done and r.error for r in failed)
    time.sleep(2)  # long after every [DONE]
    again = burst(server, [{"chunks": 2, "delay_ms": 10, "session_id": s} for s in sessions])
    stuck = [r.session_id for r in again if r.status == 409]
    assert not stuck, f"{len(stuck)} of {len(sessions)} sessions still busy: {stuck[:5]}"


def test_content_streamed_before_an_upstream_failure_is_in_the_timeline(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    """docs/architecture.md: ContentAppended texts concatenate to exactly what the client received."""
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}))
    (result,) = burst(server, [{"chunks": 8, "delay_ms": 50, "extra": {"reset_after": 3}}])
    assert result.status == 200 and result.content == prefix(result, 3)
    h.check_timeline(h.timeline(server, result.request_id), result.content)


def test_upstream_slower_than_the_provider_timeout(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, figures: Figures
) -> None:
    config = h.bmo_config({"up1": upstream.base_url}, timeout_s=1, max_retries=2)
    server = make_server(config_text=config)
    head = [{"chunks": 3, "delay_ms": 10, "extra": {"head_ms": 4000}} for _ in range(10)]
    middle = [{"chunks": 6, "delay_ms": 50, "extra": {"stall_after": 2, "stall_ms": 4000}} for _ in range(10)]
    started = time.monotonic()
    results = burst(server, head + middle)
    elapsed = time.monotonic() - started
    for r in results[:10]:  # no response head within timeout_s: a JSON 504, not retried
        assert r.status == 504 and r.error is not None and r.error["code"] == "upstream_timeout", r.error
        assert r.ended - r.started < 3.5
    for r in results[10:]:  # silent mid-stream: the content so far, an error chunk, [DONE]
        assert r.status == 200 and r.done and r.content == prefix(r, 2)
        assert r.error is not None and r.error["code"] == "upstream_timeout", r.error
        assert r.ended - r.started < 3.5
    rows = assert_one_terminal_each(server, results)
    assert {rows[r.request_id]["status_code"] for r in results} == {504}
    assert all(r.complete for r in burst(server, [{"chunks": 3, "delay_ms": 10}] * 5))
    figures("fault_slow_upstream", {"requests": len(results), "seconds": round(elapsed, 2)})


def test_malformed_sse_from_the_upstream(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, figures: Figures
) -> None:
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}))
    first = [{"chunks": 4, "delay_ms": 10, "extra": {"malformed_after": 0}} for _ in range(5)]
    later = [{"chunks": 6, "delay_ms": 20, "extra": {"malformed_after": 3}} for _ in range(5)]
    results = burst(server, first + later)
    for r in results[:5]:  # before any content: a JSON 502 (the stream was not committed yet)
        assert r.status == 502 and r.error is not None and r.error["code"] == "upstream_stream_broken"
        assert "malformed" in r.error["message"]
    for r in results[5:]:
        assert r.status == 200 and r.done and r.content == prefix(r, 3)
        assert r.error is not None and "malformed" in r.error["message"]
    rows = assert_one_terminal_each(server, results)
    assert {rows[r.request_id]["outcome"] for r in results} == {"error_500"}
    assert "Traceback" not in server.stderr()
    figures("fault_malformed_sse", {"requests": len(results)})


# -------------------------------------------------------------------- MCP crash


def test_mcp_server_killed_mid_run(make_server: Callable[..., BmoServer], figures: Figures) -> None:
    """SIGKILL the stdio MCP server while a tool call is in flight; then the one reconnect."""
    with FakeOpenAI(models=("fake-model",)) as fake:
        config = h.bmo_config({"up1": fake.base_url}) + (
            '\n[mcp.fake]\ntype = "stdio"\ncommand = "python"\nargs = ["-m", "tests.fakes.mcp_server"]\n'
            'env = { PYTHONPATH = "${PYTHONPATH}" }\n'
            "timeout = 30\n"
        )
        server = make_server(config_text=config)
        fake.script(
            ToolCalls([("p1", "mcp__fake__pid", "{}")]),
            ToolCalls([("s1", "mcp__fake__slow", '{"seconds": 25}')]),
            Text("The tool server went away."),
            ToolCalls([("e1", "mcp__fake__echo", '{"text": "back again"}')]),
            Text("Echoed after the restart."),
        )
        box: dict[str, Any] = {}

        def ask() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "use the slow tool"}]}
            with h.api(server, timeout=60) as client:
                box["response"] = client.post("/v1/chat/completions", json=body)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        h.wait_until(lambda: len(fake.requests) >= 2, timeout=30, interval=0.05)
        pid = int(next(m for m in fake.requests[1]["body"]["messages"] if m["role"] == "tool")["content"])
        time.sleep(0.5)  # the slow call is in flight now
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive(), "the run hung after the MCP server died"
        ended_after = time.monotonic() - killed_at
        response = box["response"]
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"].endswith("The tool server went away.")
        slow_result = [m for m in fake.requests[2]["body"]["messages"] if m["role"] == "tool"][-1]
        assert slow_result["content"].startswith("error:") and "fake" in slow_result["content"]
        assert ended_after < 10  # not the 25 s sleep, not the 30 s tool timeout
        request_id = response.headers["x-request-id"]
        events = h.timeline(server, request_id)
        h.check_timeline(events)
        assert [e["data"]["ok"] for e in events if e["type"] == "ToolCalled"] == [True, False]
        # the next run reconnects once (MAX_RESTARTS) and the tool works again
        with h.api(server, timeout=60) as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "echo via mcp"}]}
            second = client.post("/v1/chat/completions", json=body)
        assert second.status_code == 200
        echo = [m for m in fake.requests[4]["body"]["messages"] if m["role"] == "tool"][-1]
        assert echo["content"] == "back again"
    figures("fault_mcp_killed", {"run_ended_s_after_kill": round(ended_after, 2), "reconnected": True})


# ---------------------------------------------------------- store faults, load


def test_append_faults_during_streaming_load(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, tmp_path: Path, figures: Figures
) -> None:
    """Disk full / read-only store (the seam) switched on for ~8 s in the middle of 100 streams."""
    switch = tmp_path / "append-faults-on"
    server = make_server(
        config_text=h.bmo_config({"up1": upstream.base_url}),
        extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)},
    )
    clients, seconds = 100, 22.0
    labels: list[tuple[float, str]] = []
    session_during: list[h.StreamResult] = []
    results: list[h.StreamResult] = []

    async def client(i: int, http: Any, deadline: float) -> None:
        while time.monotonic() < deadline:
            results.append(await h.stream_chat(http, server, model=MODEL, chunks=5, delay_ms=400 + i % 200))

    async def operator(http: Any, t0: float) -> None:
        await asyncio.sleep(5)
        switch.touch()
        try:
            await asyncio.sleep(3)
            # a session turn needs a durable admission: refused fast with 503, never hung
            session_during.append(
                await h.stream_chat(http, server, model=MODEL, chunks=2, delay_ms=10, session_id="faulty")
            )
            for _ in range(20):
                labels.append((time.monotonic() - t0, posture(server)["label"]))
                await asyncio.sleep(0.25)
        finally:
            switch.unlink(missing_ok=True)
        for _ in range(30):
            labels.append((time.monotonic() - t0, posture(server)["label"]))
            await asyncio.sleep(0.25)

    async def go() -> None:
        t0 = time.monotonic()
        async with h.client_session() as http:
            await asyncio.gather(operator(http, t0), *(client(i, http, t0 + seconds) for i in range(clients)))

    try:
        asyncio.run(asyncio.wait_for(go(), seconds + 90))
    finally:
        switch.unlink(missing_ok=True)
    broken = [r for r in results if not r.complete]
    assert not broken, collections.Counter((r.status, str(r.error)[:80], r.exception[:60]) for r in broken)
    seen = [label for _, label in labels]
    assert "degraded — persist failures" in seen
    assert seen[-1] == "enabled (chat_only)"
    (during,) = session_during
    assert during.status == 503 and during.error is not None and during.error["code"] == "store_unavailable"
    assert during.ended - during.started < 5
    # recovery: the outbox flushed, the ledger finally holds every run, each ended once
    rows = assert_one_terminal_each(server, results)
    assert all(rows[r.request_id]["outcome"] == "final_answer" for r in results)
    h.wait_until(lambda: any(r["msg"] == "openai_compat.persistence_recovered" for r in server.records()))
    recovered = [r for r in server.records() if r["msg"] == "openai_compat.persistence_recovered"]
    assert recovered[0]["flushed_events"] > 0 and recovered[0]["overflowed_events"] == 0
    persist_failed = sum(r.get("outcome") == "persist_failed" for r in server.records())
    assert persist_failed > 0
    after = burst(server, [{"chunks": 2, "delay_ms": 10, "session_id": "faulty"}])
    assert after[0].complete, (after[0].status, after[0].error)
    for r in results[:5]:
        h.check_timeline(h.timeline(server, r.request_id), r.expected)
    figures(
        "fault_append_faults_under_load",
        {
            "streams": len(results),
            "incomplete": len(broken),
            "status_5xx": sum(r.status >= 500 for r in results),
            "persist_failed_records": persist_failed,
            "flushed_events": recovered[0]["flushed_events"],
            "overflowed_events": recovered[0]["overflowed_events"],
            "events_lost": 0,
        },
    )


def test_a_session_turn_ending_during_append_faults_frees_its_session(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, tmp_path: Path
) -> None:
    switch = tmp_path / "append-faults-on"
    server = make_server(
        config_text=h.bmo_config({"up1": upstream.base_url}),
        extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)},
    )
    sessions = [f"during-{i}" for i in range(5)]

    async def go() -> tuple[list[h.StreamResult], list[h.StreamResult]]:
        async with h.client_session() as http:
            turns = asyncio.gather(
                *(
                    h.stream_chat(http, server, model=MODEL, chunks=6, delay_ms=300, session_id=s)
                    for s in sessions
                )
            )
            await asyncio.sleep(0.8)  # admitted and streaming: now the store fails
            switch.touch()
            try:
                first = await turns
                await asyncio.sleep(1)
            finally:
                switch.unlink(missing_ok=True)
            await asyncio.sleep(3)  # the writer's backoff is at most 2 s
            after = [
                await h.stream_chat(http, server, model=MODEL, chunks=2, delay_ms=10, session_id=s)
                for s in sessions
            ]
            return first, after

    try:
        first, after = asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        switch.unlink(missing_ok=True)
    assert all(r.content == r.expected for r in first)  # the answers themselves arrived
    assert [r.status for r in after] == [200] * len(sessions), [(r.status, r.error) for r in after]
    assert all(r.complete for r in first), [r.error for r in first]


# ------------------------------------------------------------- kill -9, SIGTERM


def _open_streams(
    server: BmoServer, specs: list[dict[str, Any]], act: Callable[[], None], when_open: float
) -> list[h.StreamResult]:
    """Start the streams, call `act` (in a thread) once they have all been open `when_open` s."""

    async def go() -> list[h.StreamResult]:
        async with h.client_session() as http:
            tasks = [
                asyncio.create_task(h.stream_chat(http, server, **{"model": MODEL, **spec})) for spec in specs
            ]
            await asyncio.sleep(when_open)
            await asyncio.to_thread(act)
            return await asyncio.gather(*tasks)

    return asyncio.run(asyncio.wait_for(go(), 120))


def test_kill_9_during_streams(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, figures: Figures
) -> None:
    config = h.bmo_config({"up1": upstream.base_url})
    server = make_server(config_text=config)
    finished = burst(server, [{"chunks": 2, "delay_ms": 10, "session_id": f"k9-{i}"} for i in range(10)])
    assert all(r.complete for r in finished)
    specs = [{"chunks": 30, "delay_ms": 400, "session_id": f"k9-{i}" if i < 20 else ""} for i in range(100)]
    assert server.proc is not None

    def kill() -> None:
        assert upstream.stats()["open"] == len(specs)
        os.killpg(server.proc.pid, signal.SIGKILL)  # the worker and the projector too
        server.proc.wait(10)

    killed = _open_streams(server, specs, kill, when_open=4)
    assert all(not r.complete for r in killed)
    assert all(len(r.content) > 0 for r in killed if r.status == 200)
    restarted = make_server(data_dir=server.data_dir, config_text=config)
    notice = [line for line in restarted.stderr().splitlines() if "recovered" in line]
    rows = ledger_by_id(restarted)
    missing = [r.request_id for r in killed if r.request_id not in rows]
    interrupted = [r for r in killed if r.request_id in rows]
    for r in interrupted:
        row = rows[r.request_id]
        assert (row["outcome"], row["error"]) == ("error_500", "interrupted"), row
        events = h.timeline(restarted, r.request_id)
        h.check_timeline(events)
        kept = "".join(e["data"]["text"] for e in events if e["type"] == "ContentAppended")
        assert r.expected.startswith(kept)  # what was committed is a prefix of the answer
    assert notice and f"recovered {len(interrupted)} interrupted run" in notice[0]
    h.assert_every_run_terminal_once(restarted.data_dir / "events.db")
    # their sessions are free: one more turn each is admitted (200), not queued (409)
    again = burst(restarted, [{"chunks": 2, "delay_ms": 10, "session_id": f"k9-{i}"} for i in range(20)])
    assert all(r.complete for r in again), [(r.status, r.error) for r in again]
    # the read models equal a full replay of the event store
    restarted.stop()
    live = h.dump_read_models(restarted.data_dir / "read_models.db")
    h.rebuild_read_models(restarted.data_dir)
    assert h.dump_read_models(restarted.data_dir / "read_models.db") == live
    figures(
        "fault_kill_9",
        {
            "streams_killed": len(killed),
            "recovered_interrupted": len(interrupted),
            "fired_not_committed": len(missing),
            "read_models_equal_replay": True,
        },
    )
    assert not missing, f"{len(missing)} killed runs never reached the store"


def test_sigterm_graceful_shutdown(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, figures: Figures
) -> None:
    """SIGTERM (to the process group, as systemd and the TUI do) with 60 streams in flight."""
    config = h.bmo_config({"up1": upstream.base_url})
    server = make_server(config_text=config)
    assert server.proc is not None
    specs = [{"chunks": 10, "delay_ms": 500, "session_id": f"term-{i}" if i < 10 else ""} for i in range(60)]
    queued: list[h.StreamResult] = []
    timing: dict[str, float] = {}

    def term() -> None:
        # one more turn on a busy session: answered 409 and deferred until the session frees
        queued.extend(burst(server, [{"chunks": 2, "delay_ms": 10, "session_id": "term-0"}]))
        timing["term"] = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)

    results = _open_streams(server, specs, term, when_open=2)
    server.proc.wait(60)
    timing["exited"] = time.monotonic()
    assert server.proc.returncode == 0, server.stderr()[-2000:]
    complete = sum(r.complete for r in results)
    # in-flight streams are drained to the end (none is cut off half-written)
    assert complete == len(results), collections.Counter(
        (r.status, str(r.error)[:60], r.exception[:60]) for r in results if not r.complete
    )
    (busy,) = queued
    assert busy.status == 409 and busy.error is not None and busy.error["code"] == "queued"
    deferred = busy.error["run_id"]
    restarted = make_server(data_dir=server.data_dir, config_text=config)
    assert "recovered" not in restarted.stderr()  # nothing was left open
    rows = ledger_by_id(restarted)
    assert all(rows[r.request_id]["outcome"] == "final_answer" for r in results)
    assert rows[deferred]["outcome"] in ("cancelled", "final_answer"), rows[deferred]
    h.assert_every_run_terminal_once(restarted.data_dir / "events.db")
    again = burst(restarted, [{"chunks": 2, "delay_ms": 10, "session_id": f"term-{i}"} for i in range(10)])
    assert all(r.complete for r in again), [(r.status, r.error) for r in again]
    figures(
        "fault_sigterm",
        {
            "streams_in_flight": len(results),
            "completed": complete,
            "deferred_run_outcome": rows[deferred]["outcome"],
            "exit_s_after_sigterm": round(timing["exited"] - timing["term"], 2),
            "recovered_at_restart": 0,
        },
    )


# ------------------------------------------------------------------ clock skew


def _skewed_run(store: Any, base: datetime, steps: list[timedelta]) -> str:
    """A run whose every next event carries an *earlier* timestamp (saved through the store API)."""
    from app.commands import append_content, finish_run, fire_run, start_run
    from app.commands.append_content import AppendContent
    from app.commands.finish_run import FinishRun
    from app.commands.fire_run import FireRun
    from app.commands.start_run import StartRun
    from app.events.run import fold

    run_id = uuid.uuid4()
    commands = [
        (
            fire_run.decide,
            FireRun(
                run_id=run_id,
                at=base + steps[0],
                session_id="",
                route="chat_completions",
                model=MODEL,
                stream=True,
                tool_policy="chat_only",
                ambiguity_action="ask",
                is_session_reuse=False,
                client_ua="skew-test",
            ),
        ),
        (start_run.decide, StartRun(run_id=run_id, at=base + steps[1], model=MODEL, message_count=1)),
        (append_content.decide, AppendContent(run_id=run_id, at=base + steps[2], text="one ")),
        (append_content.decide, AppendContent(run_id=run_id, at=base + steps[3], text="two")),
        (
            finish_run.decide,
            FinishRun(
                run_id=run_id,
                at=base + steps[4],
                outcome="final_answer",
                status_code=200,
                elapsed_ms=5.0,
            ),
        ),
    ]
    for decide, command in commands:
        state = fold(run_id, store.stream(run_id))
        store.save(decide(state, command))
    return run_id.hex


def test_clock_skew_does_not_reorder_timelines(
    make_server: Callable[..., BmoServer], tmp_path: Path, figures: Figures
) -> None:
    """Events appended with ever earlier timestamps: timelines follow versions, the ledger follows seq."""
    from app.events.select import open_event_store

    data = tmp_path / "data"
    backwards = [timedelta(hours=-h_) for h_ in range(5)]  # each event an hour before the previous
    now = datetime.now(UTC)
    store = open_event_store(data)
    try:
        before = _skewed_run(store, now, backwards)
        older = _skewed_run(store, now - timedelta(days=1), [timedelta(0)] * 5)  # appended later
    finally:
        store.close()
    server = make_server(data_dir=data)
    store = open_event_store(data)  # a second writer while the server runs: the live projector
    try:
        live = _skewed_run(store, now - timedelta(days=2), backwards)
    finally:
        store.close()
    h.wait_until(lambda: live in ledger_by_id(server), timeout=20)
    for run in (before, live):
        events = h.timeline(server, run)
        assert [e["type"] for e in events] == [
            "Fired",
            "Started",
            "ContentAppended",
            "ContentAppended",
            "Finished",
        ]
        assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
        stamps = [datetime.fromisoformat(e["at"]) for e in events]
        assert stamps == sorted(stamps, reverse=True)  # wall clock going backwards, order kept
        assert "".join(e["data"]["text"] for e in events if e["type"] == "ContentAppended") == "one two"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        with (
            h.api(server) as client,
            client.stream(
                "GET", f"/v1/openai-compat/runs/{run}/events", params={"follow": "true"}
            ) as response,
        ):
            followed = [
                json.loads(line[6:])["type"] for line in response.iter_lines() if line.startswith("data: {")
            ]
        assert followed == [e["type"] for e in events]
    order = [r["request_id"] for r in h.all_runs(server) if r["client_ua"] == "skew-test"]
    assert order == [live, older, before]  # newest first by store position, not by started_at
    server.stop()
    replayed = tmp_path / "replay"
    shutil.copytree(data, replayed, ignore=shutil.ignore_patterns("read_models.db*", "logs"))
    h.rebuild_read_models(replayed)
    assert h.dump_read_models(replayed / "read_models.db") == h.dump_read_models(data / "read_models.db")
    figures("fault_clock_skew_store_api", {"runs": 3, "order_by": "version/seq", "ok": True})


LIBFAKETIME = next(
    (
        p
        for p in (
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/local/lib/faketime/libfaketimeMT.so.1",
        )
        if Path(p).exists()
    ),
    None,
)


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime not installed (apt-get install faketime)")
def test_clock_going_backwards_under_a_live_server(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, tmp_path: Path, figures: Figures
) -> None:
    """`bmo serve` under libfaketime; the wall clock jumps back 1 h, then 3 h, mid-stream."""
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # real skew moves CLOCK_REALTIME only
    }
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}), extra_env=env)
    try:

        def skew() -> None:
            clock.write_text("-1h\n")
            time.sleep(1.0)
            clock.write_text("-3h\n")

        first = _open_streams(server, [{"chunks": 8, "delay_ms": 300}] * 3, skew, when_open=0.8)
        later = burst(server, [{"chunks": 2, "delay_ms": 10}])  # fired at -3h: "before" the others
        assert all(r.complete for r in first + later)
        for r in first:
            events = h.timeline(server, r.request_id)
            h.check_timeline(events, r.expected)
            stamps = [datetime.fromisoformat(e["at"]) for e in events]
            assert stamps != sorted(stamps), "the clock did not go backwards inside the run"
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
            assert all(e["data"].get("latency_ms", 0) >= 0 for e in events)  # monotonic durations
            assert all(e["data"].get("elapsed_ms", 0) >= 0 for e in events)
        order = [row["request_id"] for row in h.all_runs(server)]
        assert order[0] == later[0].request_id  # newest by position, though its clock says earlier
        rows = ledger_by_id(server)
        assert rows[later[0].request_id]["started_at"] < rows[first[0].request_id]["started_at"]
    finally:
        clock.write_text("+0\n")
        _stop_faked(server)
    figures("fault_clock_skew_faketime", {"jumps": ["-1h", "-3h"], "ok": True})


def _stop_faked(server: BmoServer) -> None:
    """Stop a server under libfaketime: its own shutdown may trip on faked sleeps, so be firm."""
    if server.proc is None or server.proc.poll() is not None:
        return
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)
