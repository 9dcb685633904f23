"""Operator-read latency under 500 streams, two checkouts interleaved (A, B, A, B, ...).

`python -m tests.reliability.read_latency_ab OLD_ROOT NEW_ROOT --rounds 2 --seconds 40`
(e.g. OLD_ROOT from `git worktree add /tmp/old <commit>`). Each round runs, for each
root in turn, a fresh `bmo serve` of that root's `app/` (PYTHONPATH = the root)
against the slow upstream with the load test's shape (500 clients, 8 pieces
0.7-1.2 s apart, every fifth with a session) and the prober from t = 4 s, and
prints one JSON line: the 1-minute load average at the start, streams held at the
upstream, posture/runs/healthz p50/p99/max. Interleaving spreads the shared
machine's noise over both arms; compare them only within one invocation.
Loopback only; every process is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIENTS = 500


async def _client(i: int, http: Any, server: Any, deadline: float, done: list[bool]) -> None:
    from tests.reliability import harness as h

    rng = random.Random(i)
    await asyncio.sleep(i * 0.004)
    session_id = f"load-{i}" if i % 5 == 0 else ""
    while time.monotonic() < deadline:
        result = await h.stream_chat(
            http,
            server,
            model="up1/fake-model",
            chunks=8,
            delay_ms=rng.randint(700, 1200),
            session_id=session_id,
            timeout=90,
        )
        done.append(result.complete)
        if not result.complete:
            await asyncio.sleep(0.5)


def one_arm(seconds: float) -> dict[str, Any]:
    """Run one arm with the `app/` on PYTHONPATH (called in a child process)."""
    from tests.e2e.server import BmoServer
    from tests.reliability import harness as h
    from tests.reliability.slow_stream_upstream import SlowStreamUpstream

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(8192, hard)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="bmo-read-ab-"))
    (tmp / "ws").mkdir()
    load = os.getloadavg()[0]
    done: list[bool] = []
    with SlowStreamUpstream(tmp) as upstream:
        server = BmoServer(
            workspace=tmp / "ws", data_dir=tmp / "data", config_text=h.bmo_config({"up1": upstream.base_url})
        )
        server.start()
        try:

            async def run() -> h.Prober:
                deadline = time.monotonic() + seconds
                async with h.client_session() as http:
                    clients = asyncio.gather(
                        *(_client(i, http, server, deadline, done) for i in range(CLIENTS))
                    )
                    await asyncio.sleep(4)  # ramp-up
                    prober = h.Prober(server, seconds - 6, tmp / "probe.json")
                    await asyncio.wait_for(clients, seconds + 120)
                return prober

            probe = asyncio.run(run()).result(timeout=60)
            held = upstream.stats()["max_open"]
        finally:
            server.stop()
    out: dict[str, Any] = {"loadavg_1m": round(load, 2), "streams": len(done), "complete": sum(done)}
    out["upstream_max_open"] = held
    for name in ("posture", "runs", "healthz"):
        ms = probe[f"{name}_ms"]
        out[name] = {
            "n": len(ms),
            "p50_ms": h.percentile(ms, 50),
            "p99_ms": h.percentile(ms, 99),
            "max_ms": max(ms, default=0.0),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)  # the child process
    opts = parser.parse_args()
    if opts.arm:
        print(json.dumps(one_arm(opts.seconds)))
        return
    for _ in range(opts.rounds):
        for root in opts.roots:
            env = {**os.environ, "PYTHONPATH": str(root.resolve())}
            # this file by path: an older root need not have it; its `app/` and harness come from PYTHONPATH
            cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", "--seconds", str(opts.seconds)]
            proc = subprocess.run(
                cmd, cwd=root, env=env, capture_output=True, text=True, timeout=opts.seconds + 300
            )
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
            print(f"{time.strftime('%H:%M:%S', time.gmtime())} {root} {line}", flush=True)


if __name__ == "__main__":
    main()
