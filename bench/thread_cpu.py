"""`python -m bench.thread_cpu`: CPU ms per request of every thread of two bmo trees, A/B.

Starts the bench's mock, its OTLP sink and one `bmo serve` per tree (`--a`, `--b`: checkouts
whose `app/` is run), then runs wrk against each in turn, alternating which goes first,
round after round, and reads each thread's CPU (`/proc/PID/task/TID/schedstat`) around every
run. Python thread names come from `py-spy dump` (the loop is `MainThread`, the event writer's
and projector's executor threads `uvloop_0`, OpenTelemetry's export thread
`OtelBatchSpanRecordProcessor`); granian's own threads show as `native:...`. Wake-ups per
request (voluntary context switches) are given beside the CPU: on a VM each costs more
than the work many of them wake up for. Per-thread CPU
time is hardly affected by other load on the machine, unlike latency, so A/B differences of
a few percent can be read on a shared machine when the rounds are interleaved.

    python -m bench.thread_cpu --a /path/to/main-checkout --b . --rounds 3 --modes c32,c32s,c1
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import arms as arms_mod
from bench.idle import sample_tree
from bench.procs import Procs, process_role, process_tree
from bench.setup_deps import ensure_py_spy, ensure_wrk
from bench.wrk import parse_wrk, write_script, wrk_argv

__all__ = ["main"]

_POOLS = ("asyncio_", "ThreadPoolExecutor", "Thread-")


def _thread_names(root: int) -> dict[int, str]:
    """Native thread id -> Python thread name, for every process of the tree (via py-spy)."""
    names: dict[int, str] = {}
    for pid in process_tree(root):
        dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
        for match in re.finditer(r'^Thread (\d+) \((?:idle|active)[^)]*\)(?:: "([^"]*)")?', dump, re.M):
            names[int(match.group(1))] = match.group(2) or "python (unnamed)"
    return names


def _group(names: dict[int, str], tid: int, comm: str) -> str:
    name = names.get(tid)
    if name is None:
        return "native:" + comm[:12]
    return next((pool for pool in _POOLS if name.startswith(pool)), name)


def _run(arm: arms_mod.Arm, script: Path, connections: int, seconds: float, names: dict[int, str]) -> dict:
    before = sample_tree(arm.roots[0])
    argv = wrk_argv(arm.port, script, connections=connections, duration=seconds)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = sample_tree(arm.roots[0])
    result = parse_wrk(done.stdout)
    requests = max(1, int(result["requests"]))
    spent: collections.Counter[str] = collections.Counter()
    woke: collections.Counter[str] = collections.Counter()
    for key, sample in after.items():
        cpu_ns = sample.cpu_ns - (before[key].cpu_ns if key in before else 0)
        role = process_role(sample.pid)
        role = "worker" if role.startswith("worker") else role
        group = f"{role}/{_group(names, sample.tid, sample.name)}"
        spent[group] += cpu_ns
        woke[group] += sample.wakeups - (before[key].wakeups if key in before else 0)
    out = {key: ns / 1e6 / requests for key, ns in spent.items() if ns / 1e6 / requests >= 0.001}
    out.update({f"{key} (wake-ups)": n / requests for key, n in woke.items() if n / requests >= 0.01})
    cpu = {k: v for k, v in out.items() if not k.endswith("(wake-ups)")}
    out["= worker"] = sum(v for k, v in cpu.items() if k.startswith("worker/"))
    out["= projector"] = sum(v for k, v in cpu.items() if k.startswith("projector/"))
    out["rps"] = result["rps"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.thread_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout of the 'A' tree (e.g. main)")
    parser.add_argument("--b", type=Path, required=True, help="checkout of the 'B' tree (e.g. this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--modes", default="c32,c32s,c1", help="cN = N connections, suffix s = streaming")
    parser.add_argument("--no-otel", action="store_true")
    args = parser.parse_args(argv)
    ensure_wrk()
    ensure_py_spy()
    modes = [(m, int(m.rstrip("s")[1:]), m.endswith("s")) for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bmo-thread-cpu-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        procs = Procs(work / "logs")
        try:
            mock_port, otlp_port = arms_mod.start_mock_and_sink(procs, work, otel=not args.no_otel)
            arms = {
                name: arms_mod.start_bmo(procs, mock_port, work, otlp_port, tree=tree, name=name)
                for name, tree in (("A", args.a), ("B", args.b))
            }
            model, token = arms["A"].model, arms["A"].token
            scripts = {s: write_script(work / f"{s}.lua", model=model, token=token, stream=s) for s in (0, 1)}
            for arm in arms.values():  # warm both up, then learn their threads' names
                for stream in (0, 1):
                    subprocess.run(
                        wrk_argv(arm.port, scripts[stream], connections=32, duration=2), capture_output=True
                    )
            names = {tid: n for arm in arms.values() for tid, n in _thread_names(arm.roots[0]).items()}
            results: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
            for round_no in range(args.rounds):
                for mode, connections, stream in modes:
                    for name in "AB" if round_no % 2 == 0 else "BA":
                        res = _run(arms[name], scripts[int(stream)], connections, args.duration, names)
                        results[(mode, name)].append(res)
                        load = Path("/proc/loadavg").read_text().split()[0]
                        print(
                            f"{mode} {name} load {load} rps {res['rps']:.0f} "
                            f"worker {res['= worker']:.3f} projector {res['= projector']:.3f}",
                            flush=True,
                        )
        finally:
            procs.stop_all()
    print("medians, ms of CPU per request (rps: requests/s)")
    for mode, _, _ in modes:
        print(f"-- {mode}")
        keys = sorted({k for n in "AB" for r in results[(mode, n)] for k in r})
        for key in keys:
            a, b = (statistics.median(r.get(key, 0.0) for r in results[(mode, n)]) for n in "AB")
            print(f"   {key:44s} A {a:9.3f}   B {b:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
