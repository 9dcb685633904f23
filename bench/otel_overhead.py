"""What OpenTelemetry costs a request: `bmo serve` with tracing off, on, and pointed at a dead collector.

On demand, never part of the test suite. Run from the repository root:

    python bench/otel_overhead.py --requests 300 --concurrency 8

Each arm starts its own `bmo serve` (granian, 1 worker) on loopback against the
offline model `bmo/local` ("read README.md": one tool call, two model calls,
five spans per request), warms up, then sends N sequential non-streaming chats
and N more from `--concurrency` concurrent clients (httpx over keep-alive
connections). It prints p50/p99 latency, requests per second and the server's
CPU milliseconds per request (its whole process tree, from /proc) side by side,
and appends the table to docs/bench-otel.md with the date and machine facts.

Arms: `off` (`enabled = false`), `live` (a local OTLP/HTTP receiver in its own
process that parses and counts every span), `dead` (an endpoint on a closed port).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "bmo/local", "stream": False, "messages": [{"role": "user", "content": "read README.md"}]}
ARMS = ("off", "live", "dead")


@dataclass
class Phase:
    latencies_ms: list[float]
    wall_s: float
    cpu_s: float

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def rps(self) -> float:
        return self.count / self.wall_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.count


@dataclass
class ArmResult:
    arm: str
    sequential: Phase
    concurrent: Phase
    note: str


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(ROOT))  # tests.e2e.server and tests.fakes.otlp_receiver
    runs: dict[str, list[ArmResult]] = {arm: [] for arm in args.arms}
    for round_no in range(args.rounds):  # interleaved, so drift on the machine hits every arm alike
        for arm in args.arms:
            print(f"round {round_no + 1}/{args.rounds}: {arm}", file=sys.stderr)
            runs[arm].append(_run_arm(arm, args.requests, args.concurrency, args.warmup))
    results = [_merge(arm_runs) for arm_runs in runs.values()]
    table = _table(results)
    print(table)
    if not args.no_write:
        _append_report(ROOT / "docs" / "bench-otel.md", table, args)
        print(f"\nappended to {ROOT / 'docs' / 'bench-otel.md'}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per phase (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in the concurrent phase")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before each arm")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all arms, interleaved; results merged")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to docs/")
    return parser.parse_args(argv)


def _run_arm(arm: str, requests: int, concurrency: int, warmup: int) -> ArmResult:
    from tests.e2e.server import BmoServer

    receiver = _Receiver() if arm == "live" else None
    with tempfile.TemporaryDirectory(prefix=f"bmo-bench-{arm}-") as tmp:
        workspace = _workspace(Path(tmp))
        config = _config(arm, receiver.endpoint if receiver else "")
        server = BmoServer(workspace=workspace, data_dir=Path(tmp) / "data", config_text=config).start()
        try:
            asyncio.run(_drive(server, warmup, 1))
            pid = server.proc.pid if server.proc else 0
            sequential = _measure(server, pid, requests, 1)
            concurrent = _measure(server, pid, requests, concurrency)
        finally:
            server.stop()  # flushes the last spans
        spans = receiver.stop() if receiver is not None else 0
        note = _note(arm, spans, server.stderr())
    return ArmResult(arm, sequential, concurrent, note)


class _Receiver:
    """The live arm's OTLP/HTTP receiver, in its own process so it never competes for our GIL."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_serve_receiver, args=(child, str(ROOT)), daemon=True)
        self._proc.start()
        self.endpoint: str = self._conn.recv()

    def stop(self) -> int:
        self._conn.send("stop")
        spans: int = self._conn.recv()
        self._proc.join(5)
        return spans


def _serve_receiver(conn: Connection, root: str) -> None:
    sys.path.insert(0, root)
    from tests.fakes.otlp_receiver import OtlpReceiver

    with OtlpReceiver(keep=False) as receiver:  # parses and counts spans, keeps nothing
        conn.send(receiver.endpoint)
        conn.recv()
        conn.send(receiver.span_count)


def _merge(runs: list[ArmResult]) -> ArmResult:
    def phase(phases: list[Phase]) -> Phase:
        latencies = [ms for p in phases for ms in p.latencies_ms]
        return Phase(latencies, sum(p.wall_s for p in phases), sum(p.cpu_s for p in phases))

    notes = "; ".join(dict.fromkeys(r.note for r in runs))
    sequential, concurrent = phase([r.sequential for r in runs]), phase([r.concurrent for r in runs])
    return ArmResult(runs[0].arm, sequential, concurrent, notes)


def _workspace(tmp: Path) -> Path:
    workspace = tmp / "workspace"
    (workspace / ".git").mkdir(parents=True)
    (workspace / "README.md").write_text("# Bench project\n\nTODO: write docs\n")
    return workspace


def _config(arm: str, live_endpoint: str) -> str:
    if arm == "off":
        return "[options.telemetry.otel]\nenabled = false\n"
    endpoint = live_endpoint if arm == "live" else _closed_port_url()
    return f'[options.telemetry.otel]\nenabled = true\nendpoint = "{endpoint}"\n'


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _measure(server: Any, pid: int, requests: int, concurrency: int) -> Phase:
    cpu_before = _tree_cpu_s(pid)
    started = time.perf_counter()
    latencies = asyncio.run(_drive(server, requests, concurrency))
    wall = time.perf_counter() - started
    return Phase(latencies, wall, _tree_cpu_s(pid) - cpu_before)


async def _drive(server: Any, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=server.headers, timeout=60, limits=limits
    ) as http:

        async def client() -> None:
            for _ in queue:
                started = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=BODY)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"chat failed: {response.status_code} {response.text[:200]}")

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def _tree_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and all its descendants (Linux /proc), in seconds."""
    if not pid or not Path("/proc").exists():
        return 0.0
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        proc = int(stat.parent.name)
        parents[proc] = int(fields[1])
        times[proc] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def _note(arm: str, spans: int, stderr: str) -> str:
    if arm == "live":
        return f"receiver got {spans} spans a round"
    if arm == "dead":
        warnings = [line for line in stderr.splitlines() if "OpenTelemetry: " in line]
        return f"{len(warnings)} warning line(s) on stderr"
    return "no exporter"


def _table(results: list[ArmResult]) -> str:
    header = (
        "| arm | seq p50 ms | seq p99 ms | seq RPS | seq CPU ms/req "
        "| conc p50 ms | conc p99 ms | conc RPS | conc CPU ms/req | note |"
    )
    rows = [header, "|" + "---|" * 10]
    for r in results:
        s, c = r.sequential, r.concurrent
        rows.append(
            f"| {r.arm} | {s.p(0.5):.2f} | {s.p(0.99):.2f} | {s.rps:.1f} | {s.cpu_ms_per_request:.2f} "
            f"| {c.p(0.5):.2f} | {c.p(0.99):.2f} | {c.rps:.1f} | {c.cpu_ms_per_request:.2f} | {r.note} |"
        )
    baseline = next((r for r in results if r.arm == "off"), None)
    if baseline is not None:
        for r in results:
            if r is not baseline:
                rows.append(_delta(r, baseline))
    return "\n".join(rows)


def _delta(r: ArmResult, base: ArmResult) -> str:
    cells = []
    for new, old in ((r.sequential, base.sequential), (r.concurrent, base.concurrent)):
        pairs = [
            (new.p(0.5), old.p(0.5)),
            (new.p(0.99), old.p(0.99)),
            (new.rps, old.rps),
            (new.cpu_ms_per_request, old.cpu_ms_per_request),
        ]
        cells += [f"{(a - b) / b * 100:+.0f}%" if b else "n/a" for a, b in pairs]
    return f"| {r.arm} vs off | " + " | ".join(cells) + " | |"


def _append_report(path: Path, table: str, args: argparse.Namespace) -> None:
    if not path.exists():
        path.write_text(
            "# OpenTelemetry overhead (bench/otel_overhead.py)\n\n"
            "`bmo serve` (granian, 1 worker) with tracing off, exporting to a live local OTLP/HTTP\n"
            "receiver, and pointed at a closed port. Non-streaming `bmo/local` chats that read a file\n"
            "(5 spans each), httpx keep-alive clients on the same machine. CPU is the server's process\n"
            "tree (utime + stime) per request. Rerun: `python bench/otel_overhead.py --requests N`.\n"
        )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = _machine_facts()
    section = (
        f"\n## {when}\n\n{facts}\n\n"
        f"Per arm and round: {args.requests} sequential requests, then {args.requests} from "
        f"{args.concurrency} concurrent clients, after {args.warmup} untimed warm-up requests; "
        f"{args.rounds} round(s), arms interleaved, results merged.\n\n{table}\n"
    )
    with path.open("a") as out:
        out.write(section)


def _machine_facts() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("granian", "litestar", "opentelemetry-sdk", "httpx")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"Machine: {os.cpu_count()} CPU ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {versions}. Load average at the end: {load} "
        "(anything above ~0.5 means other work shared the cores)."
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
