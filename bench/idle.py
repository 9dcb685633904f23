"""Idle cost of `bmo serve`: CPU and wake-ups of each process in its tree, with no traffic.

Starts the mock upstream and bmo exactly as `bench.run` does (OpenTelemetry on when the
OTLP sink is available), sends a few requests so every lazy part is warm, then reads
`/proc` for each process of the tree (and each thread: its voluntary context switches
count the times it slept and woke, i.e. timers) over a window with no traffic.

    python -m bench.idle --window 60                  # this checkout
    python -m bench.idle --window 60 --tree /tmp/old  # another checkout's app/

CPU is read from each thread's `schedstat` (nanoseconds), not the 10 ms ticks of `stat`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.arms import start_bmo, start_mock, start_otlp_sink
from bench.procs import Procs, process_tree

__all__ = ["ThreadSample", "main", "sample_tree"]


@dataclass(frozen=True)
class ThreadSample:
    pid: int
    tid: int
    name: str
    cpu_ns: int
    wakeups: int


def _thread(pid: int, tid: int) -> ThreadSample | None:
    base = Path(f"/proc/{pid}/task/{tid}")
    try:
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    try:
        ns = int((base / "schedstat").read_text().split()[0])
    except OSError:
        return None
    switches = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt")), 0
    )
    return ThreadSample(pid, tid, name, ns, switches)


def sample_tree(root: int) -> dict[tuple[int, int], ThreadSample]:
    """Every thread of every process in the tree, keyed by (pid, tid)."""
    out: dict[tuple[int, int], ThreadSample] = {}
    for pid in process_tree(root):
        try:
            tids = [int(p.name) for p in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            sample = _thread(pid, tid)
            if sample is not None:
                out[(pid, tid)] = sample
    return out


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return " ".join(a.rsplit("/", 1)[-1] for a in args[:6])


def _warm(port: int, token: str, model: str, count: int = 5) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(count):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def report(before: dict, after: dict, window: float) -> dict:
    """Per process: CPU % of a core and wake-ups per second; per thread for the busy ones."""
    procs: dict[int, dict] = {}
    for key, end in after.items():
        start = before.get(key)
        ticks = (end.cpu_ns - (start.cpu_ns if start else 0)) / 1e9
        wakes = end.wakeups - (start.wakeups if start else 0)
        proc = procs.setdefault(
            end.pid, {"cmd": _cmdline(end.pid), "cpu_pct": 0.0, "wakeups_s": 0.0, "threads": []}
        )
        proc["cpu_pct"] += 100 * ticks / window
        proc["wakeups_s"] += wakes / window
        if wakes or ticks:
            proc["threads"].append(
                {"name": end.name, "cpu_pct": 100 * ticks / window, "wakeups_s": wakes / window}
            )
    total = sum(p["cpu_pct"] for p in procs.values())
    return {"window_s": window, "total_cpu_pct": total, "processes": procs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the warm-up requests")
    parser.add_argument("--no-otel", action="store_true")
    parser.add_argument("--tree", type=Path, default=None, help="a checkout whose app/ to run")
    args = parser.parse_args(argv)
    if args.tree is not None:
        os.environ["PYTHONPATH"] = str(args.tree.resolve())
    with tempfile.TemporaryDirectory(prefix="bmo-idle-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        try:
            mock_port, _ = start_mock(procs, "mock")
            sink = None if args.no_otel else start_otlp_sink(procs, work)
            arm = start_bmo(procs, mock_port, work, sink[0] if sink else None)
            _warm(arm.port, arm.token, arm.model)
            time.sleep(args.settle)
            root = arm.roots[0]
            before = sample_tree(root)
            time.sleep(args.window)
            result = report(before, sample_tree(root), args.window)
        finally:
            procs.stop_all()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
