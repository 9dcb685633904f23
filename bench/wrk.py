"""wrk (closed loop, one thread): a Lua script per target, and the parsed result.

The script sets the POST body and headers, and its `done()` hook prints one
`BENCH_JSON {...}` line with the request count, errors and the p50/p90/p99
latency from wrk's histogram (for streams: time to the last byte).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["parse_wrk", "write_script", "wrk_argv"]

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_err":%d,"read_err":%d,' ..
    '"write_err":%d,"status_err":%d,"timeout_err":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def write_script(path: Path, *, model: str, token: str, stream: bool) -> Path:
    body = json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello."}]}
    )
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = "Bearer {token}"',
    ]
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def wrk_argv(
    port: int,
    script: Path,
    *,
    connections: int,
    duration: float,
    prefix: Sequence[str] = (),
    path: str = "/v1/chat/completions",
) -> list[str]:
    argv = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    return [*argv, "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"]


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The BENCH_JSON line as rps, error counts and latencies in ms."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {stdout[-500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_err", "read_err", "write_err", "status_err", "timeout_err"))
    if not raw["requests"]:  # nothing finished in the run: no latency to report
        raw.update(p50_us=math.nan, p90_us=math.nan, p99_us=math.nan, max_us=math.nan, mean_us=math.nan)
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "errors": errors,
        "status_errors": raw["status_err"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
    }
