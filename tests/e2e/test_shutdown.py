"""SIGTERM drains with a deadline: runs in flight finish until it, the rest end `error_500`/`interrupted`.

Real `bmo serve` (granian) on the slow-streaming OpenAI-protocol upstream: streams that would last a minute,
a short `shutdown_timeout_s`, then SIGTERM (once, or twice) to the server's main process, as systemd or
Kubernetes send it. Each run gets exactly one terminal event, each client a final error chunk, the process
exits 0 within the deadline plus 2 s, and the read models a restart serves equal a full replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.reliability.slow_stream_upstream import SlowStreamUpstream

DEADLINE_S = 2.0
STREAMS = 3


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[SlowStreamUpstream]:
    with SlowStreamUpstream(tmp_path / "upstream") as up:
        yield up


def _config(upstream: SlowStreamUpstream, shutdown_timeout_s: float = DEADLINE_S) -> str:
    return (
        f'[options]\nmodel = "slow/fake-model"\n'
        f"[options.http_server]\nshutdown_timeout_s = {shutdown_timeout_s}\n"
        f'[providers.slow]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-x"\n'
        'models = ["fake-model"]\n'
    )


class _Stream(threading.Thread):
    """One streaming chat request read to its end; keeps every SSE data line it got."""

    def __init__(self, server: BmoServer, nonce: str, chunks: int, delay_ms: int) -> None:
        super().__init__(daemon=True)
        self.server, self.nonce = server, nonce
        self.body = {
            "model": "slow/fake-model",
            "stream": True,
            "messages": [
                {"role": "user", "content": f"<<stream nonce={nonce} chunks={chunks} delay_ms={delay_ms}>>"}
            ],
        }
        self.data: list[str] = []
        self.request_id = ""
        self.first_content = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=60) as http,
                http.stream(
                    "POST",
                    f"{self.server.base_url}/v1/chat/completions",
                    json=self.body,
                    headers=self.server.headers,
                ) as response,
            ):
                self.request_id = response.headers["x-request-id"]
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.data.append(line[6:])
                        if self.nonce in line:
                            self.first_content.set()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _open_streams(server: BmoServer, count: int, delay_ms: int = 1000) -> list[_Stream]:
    streams = [_Stream(server, f"n{i}x{os.getpid()}", 60, delay_ms) for i in range(count)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.first_content.wait(30), f"stream {s.nonce} never got content: {server.stderr()}"
    return streams


def _exit_within(server: BmoServer, seconds: float) -> tuple[int, float]:
    assert server.proc is not None
    started = time.monotonic()
    code = server.proc.wait(timeout=seconds + 30)  # measured, then judged: a hang fails, not blocks
    return code, time.monotonic() - started


def _finished(server: BmoServer, request_id: str) -> list[dict]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
        events = http.get(f"/v1/openai-compat/runs/{request_id}/events").json()["data"]
    return [e for e in events if e["type"] == "Finished"]


def _restart(make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream) -> BmoServer:
    return make_server(config_text=_config(upstream))


def _ledger(server: BmoServer, request_ids: list[str]) -> tuple[list[dict], list[list[dict]]]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
        runs = http.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
        timelines = [http.get(f"/v1/openai-compat/runs/{r}/events").json()["data"] for r in request_ids]
    return runs, timelines


def _assert_read_models_equal_a_replay(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, live: BmoServer, ids: list[str]
) -> None:
    """What the restarted server projected live equals a rebuild from the events alone."""
    before = _ledger(live, ids)
    live.stop()
    for suffix in ("", "-wal", "-shm"):
        (live.data_dir / f"read_models.db{suffix}").unlink(missing_ok=True)
    rebuilt = make_server(config_text=_config(upstream))
    assert _ledger(rebuilt, ids) == before


def _assert_interrupted(stream: _Stream) -> None:
    assert stream.error is None, stream.error
    assert stream.data[-1] == "[DONE]", stream.data[-3:]
    error = json.loads(stream.data[-2])["error"]
    assert error["code"] == "server_shutting_down", error
    assert "X-BMO-Resume-Run-Id" in error["message"]
    assert f"{stream.nonce}:0;" in "".join(stream.data)  # it had streamed before the end


def test_sigterm_drains_until_the_deadline_then_interrupts_each_run(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=_config(upstream))
    streams = _open_streams(server, STREAMS)
    assert server.proc is not None
    sent = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    code, took = _exit_within(server, DEADLINE_S)
    for s in streams:
        s.join(30)
    assert code == 0, server.stderr()
    assert took <= DEADLINE_S + 2.0, f"exited {took:.2f}s after SIGTERM"
    assert time.monotonic() - sent >= DEADLINE_S - 0.2  # it drained first: nothing ended early
    for s in streams:
        _assert_interrupted(s)

    again = _restart(make_server, upstream)  # a fresh process: no recovery sweep needed for these runs
    for s in streams:
        finished = _finished(again, s.request_id)
        assert len(finished) == 1, finished
        assert finished[0]["data"]["outcome"] == "error_500"
        assert finished[0]["data"]["error"] == "interrupted"
    assert "recovered" not in again.stderr()  # every run was closed by the drain, not by recovery
    _assert_read_models_equal_a_replay(make_server, upstream, again, [s.request_id for s in streams])


def test_a_run_that_ends_within_the_deadline_completes_normally(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=_config(upstream, shutdown_timeout_s=20))
    stream = _Stream(server, f"short{os.getpid()}", 8, 250)  # about 2 s in all
    stream.start()
    assert stream.first_content.wait(30)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGTERM)
    code, took = _exit_within(server, 20)
    stream.join(30)
    assert code == 0, server.stderr()
    assert took < 15, f"exited {took:.2f}s after SIGTERM: the drain waited for more than the run"
    assert stream.data[-1] == "[DONE]"
    content = "".join(
        c["delta"].get("content") or "" for d in stream.data[:-1] for c in json.loads(d).get("choices", [])
    )
    assert content == "".join(f"{stream.nonce}:{i};" for i in range(8))
    again = _restart(make_server, upstream)
    finished = _finished(again, stream.request_id)
    assert [f["data"]["outcome"] for f in finished] == ["final_answer"]


def test_a_second_sigterm_ends_runs_at_once(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=_config(upstream, shutdown_timeout_s=120))
    streams = _open_streams(server, 2)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGTERM)
    # the drain has begun once the server stops accepting new connections
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{server.base_url}/healthz", timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.05)
    time.sleep(1.2)  # past the window in which a second signal counts as the same Ctrl-C
    os.kill(server.proc.pid, signal.SIGTERM)
    code, took = _exit_within(server, 10)
    assert code == 0, server.stderr()
    assert took <= 10, f"exited {took:.2f}s after the second SIGTERM"
    for s in streams:
        s.join(30)
        _assert_interrupted(s)
    again = _restart(make_server, upstream)
    for s in streams:
        assert [f["data"]["error"] for f in _finished(again, s.request_id)] == ["interrupted"]


def test_kill_9_of_the_server_leaves_no_worker_or_projector_behind(
    make_server: Callable[..., BmoServer],
) -> None:
    """The projector and granian's workers hold no reason to live once `bmo serve` is gone."""
    server = make_server()
    assert server.proc is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    kinds = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in children}
    assert any("projections run" in cmd for cmd in kinds.values()), kinds
    assert any("granian" in cmd or "worker" in cmd for cmd in kinds.values()), kinds
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 20
    alive = list(children)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.1)
    assert not alive, {pid: kinds[pid] for pid in alive}


def _running(pid: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
