"""The c=1 latency distribution of `bmo serve`, and where its slow requests fall in time.

One keep-alive connection sends non-streaming chat completions back to back (as wrk
-c1 does) and times each one; the same client against the mock alone gives the floor.
Several code trees can be compared in interleaved rounds (`--tree A --tree B`: each
round starts bmo from each tree in turn, on a fresh data dir, with the same mock), so
a busy shared machine affects both alike.

    python -m bench.tail --requests 3000 --rounds 3 --tree /tmp/before --tree .

Prints one JSON object: per tree and round, p50/p90/p99/p99.9/max of the added latency
(bmo minus the mock's median), the slow requests' offsets from the start (to see a
period) and the server tree's CPU per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.arms import REPO, start_bmo, start_mock, start_otlp_sink
from bench.procs import Procs, free_port, tree_cpu_seconds
from bench.stats import percentile
from bench.ttft import build_request

__all__ = ["main", "timed_requests"]


def _read_response(sock: socket.socket, buf: bytearray) -> bytes:
    """One HTTP/1.1 response with Content-Length (what bmo and the mock send when not streaming)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head_end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:head_end]).lower()
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    while len(buf) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    body = bytes(buf[head_end : head_end + length])
    del buf[: head_end + length]
    if not head.startswith(b"http/1.1 200"):
        raise RuntimeError(f"status {head[:40]!r}: {body[:200]!r}")
    return body


def timed_requests(port: int, token: str, model: str, count: int) -> list[tuple[float, float]]:
    """[(start offset s, latency ms)] of `count` sequential requests on one connection."""
    request = build_request(port, token, model, stream=False)
    out: list[tuple[float, float]] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        origin = time.perf_counter()
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            _read_response(sock, buf)
            out.append((start - origin, (time.perf_counter() - start) * 1000))
    return out


def _summary(samples: list[tuple[float, float]], floor_ms: float) -> dict[str, Any]:
    added = [ms - floor_ms for _, ms in samples]
    p99 = percentile(added, 99)
    slow = [(round(t, 3), round(ms - floor_ms, 2)) for t, ms in samples if ms - floor_ms > max(p99, 4.0)]
    return {
        "n": len(added),
        "p50": percentile(added, 50),
        "p90": percentile(added, 90),
        "p99": p99,
        "p99_9": percentile(added, 99.9),
        "max": max(added),
        "over_4ms": sum(1 for a in added if a > 4.0),
        "slow": slow[:40],
    }


def _bmo_once(
    procs: Procs, work: Path, tree: Path, mock_port: int, otlp: int | None, count: int
) -> dict[str, Any]:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        arm = start_bmo(procs, mock_port, work, otlp)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    try:
        timed_requests(arm.port, arm.token, arm.model, 200)  # warm-up: imports, pools, caches
        cpu0 = tree_cpu_seconds(arm.roots).seconds
        samples = timed_requests(arm.port, arm.token, arm.model, count)
        cpu = tree_cpu_seconds(arm.roots).seconds - cpu0
    finally:
        procs.stop(procs.children[-1])
    return {"samples": samples, "cpu_ms_per_req": cpu * 1000 / count}


_CHEAP_SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _cheap_sink(procs: Procs) -> int:
    port = free_port()
    procs.spawn("cheap_sink", [sys.executable, "-c", _CHEAP_SINK, str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return port
        time.sleep(0.05)
    raise TimeoutError("the cheap OTLP sink did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--tree", action="append", type=Path, help="a checkout whose app/ to run (default: this one)"
    )
    parser.add_argument("--no-otel", action="store_true")
    parser.add_argument(
        "--cheap-sink",
        action="store_true",
        help="an OTLP sink that answers without decoding (what bmo's export costs without the sink's)",
    )
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [REPO])]
    results: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="bmo-tail-") as tmp:
        procs = Procs(Path(tmp))
        try:
            mock_port, _ = start_mock(procs, "mock")
            if args.cheap_sink:
                otlp: int | None = _cheap_sink(procs)
            else:
                sink = None if args.no_otel else start_otlp_sink(procs, Path(tmp))
                otlp = sink[0] if sink else None
            for rnd in range(args.rounds):
                for i, tree in enumerate(trees):
                    floor = percentile(
                        [ms for _, ms in timed_requests(mock_port, "x", "mock-model", 500)], 50
                    )
                    work = Path(tmp) / f"r{rnd}-{i}"
                    run = _bmo_once(procs, work, tree, mock_port, otlp, args.requests)
                    summary = _summary(run["samples"], floor)
                    summary.update(round=rnd, floor_ms=floor, cpu_ms_per_req=run["cpu_ms_per_req"])
                    results[str(tree)].append(summary)
                    print(
                        f"round {rnd} {tree}: p50 {summary['p50']:.2f} p99 {summary['p99']:.2f} "
                        f"p99.9 {summary['p99_9']:.2f} max {summary['max']:.1f} ms, "
                        f">4ms {summary['over_4ms']}, cpu {run['cpu_ms_per_req']:.2f} ms/req",
                        flush=True,
                    )
        finally:
            procs.stop_all()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
