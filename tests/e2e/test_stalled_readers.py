"""Slow and stalled readers: a bounded buffer each, a stall disconnect recorded, nobody else held back.

Real `bmo serve` on the slow-streaming upstream told to stream as fast as it can; the clients are raw
sockets with a small receive buffer, so the server's writes really block when they stop reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.reliability.slow_stream_upstream import SlowStreamUpstream

STALL_S = 2.0


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[SlowStreamUpstream]:
    with SlowStreamUpstream(tmp_path / "upstream") as up:
        yield up


def _config(upstream: SlowStreamUpstream) -> str:
    return (
        f'[options]\nmodel = "slow/fake-model"\n[options.http_server]\nstall_timeout_s = {STALL_S}\n'
        f'[providers.slow]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-x"\n'
        'models = ["fake-model"]\n'
    )


def _raw_stream(server: BmoServer, directive: str) -> tuple[socket.socket, str]:
    """Send a streaming chat request on a raw socket; read only the response head. Returns the run id."""
    body = json.dumps(
        {"model": "slow/fake-model", "stream": True, "messages": [{"role": "user", "content": directive}]}
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bmo\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {server.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        assert piece, "connection closed before the response head"
        head += piece
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("x-request-id:"):
            return sock, line.split(":", 1)[1].strip()
    raise AssertionError(head)


def _tree_rss_mb(pid: int) -> float:
    pids = [
        pid,
        *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()),
    ]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def _finished(server: BmoServer, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=10) as http:
        while time.monotonic() < deadline:
            events = http.get(f"/v1/openai-compat/runs/{run_id}/events").json()["data"]
            done = [e for e in events if e["type"] == "Finished"]
            if done:
                assert len(done) == 1, done
                return done[0]["data"]
            time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish within {timeout}s")


def test_a_stalled_reader_costs_a_bounded_buffer_and_is_disconnected_and_recorded(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=_config(upstream))
    assert server.proc is not None
    before = _tree_rss_mb(server.proc.pid)
    stalled, run_id = _raw_stream(server, "<<stream nonce=big chunks=400000 delay_ms=0>>")
    try:
        # meanwhile another client streams to the end: the stalled one holds back only its own run
        client = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30)
        body = {
            "model": "slow/fake-model",
            "stream": True,
            "messages": [{"role": "user", "content": "<<stream nonce=other chunks=20 delay_ms=10>>"}],
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert "other:19;" in "".join(lines)
        client.close()

        finished = _finished(server, run_id, timeout=STALL_S + 30)
        assert finished["outcome"] == "cancelled"
        assert finished["status_code"] == 499
        assert "client stalled" in finished["error"]
        grown = _tree_rss_mb(server.proc.pid) - before
        assert grown < 64, f"bmo's process tree grew {grown:.0f} MB behind one stalled reader"
    finally:
        stalled.close()
    records = server.records_for(run_id, 2)
    terminal = [r for r in records if r.get("terminal")]
    assert [r["outcome"] for r in terminal] == ["cancelled"]
    assert "client stalled" in terminal[0]["error"]


def test_a_slow_reader_that_keeps_reading_is_served_to_the_end(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=_config(upstream))
    sock, run_id = _raw_stream(server, "<<stream nonce=slow chunks=4000 delay_ms=0>>")
    received = b""
    with sock:
        sock.settimeout(30)
        while not received.endswith(b"data: [DONE]\n\n") and b"0\r\n\r\n" not in received[-16:]:
            piece = sock.recv(2048)  # a small bite at a time: the server's writes wait on this reader
            if not piece:
                break
            received += piece
            time.sleep(0.002)  # the slow client itself (it reads, just slowly), not a synchronisation
    assert b"slow:3999;" in received
    assert _finished(server, run_id)["outcome"] == "final_answer"
