"""`python -m bench.profile`: a flame graph of `bmo serve` under wrk load.

Starts the bench's mock upstream and `bmo serve` (from this checkout, or from
`--tree`), warms it up, then runs wrk at `--concurrency` while `py-spy record`
samples the processes of bmo's tree (worker, projector, main: one root frame
per process). Writes an SVG (`--out`) and prints one JSON line with the run's
requests, RPS and CPU ms per request per process role.

    python -m bench.profile --concurrency 32 --out docs/img/flame-c32-after.svg
    python -m bench.profile --concurrency 1 --tree /path/to/old/checkout --out /tmp/c1-before.svg

py-spy is a bench-only tool, pip-installed on first use like the bench's other
tools (never in the runtime or test locks); it needs ptrace rights on
the processes it samples (root, or `kernel.yama.ptrace_scope = 0`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import arms as arms_mod
from bench.procs import Procs, by_role, roles_cpu_seconds
from bench.setup_deps import ensure_py_spy, ensure_wrk
from bench.wrk import parse_wrk, write_script, wrk_argv

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--tree", type=Path, default=None, help="run bmo from this checkout")
    parser.add_argument("--out", type=Path, required=True, help="an .svg flame graph or .txt stacks")
    parser.add_argument("--no-otel", action="store_true", help="no OTLP sink: OpenTelemetry off")
    parser.add_argument("--no-profile", action="store_true", help="only the CPU figures, no py-spy")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    ensure_wrk()
    if not args.no_profile:
        ensure_py_spy()
    if not args.no_profile and shutil.which("py-spy") is None:
        print("bench.profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bmo-profile-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        procs = Procs(work / "logs")
        try:
            mock_port, otlp_port = arms_mod.start_mock_and_sink(procs, work, otel=not args.no_otel)
            arm = arms_mod.start_bmo(procs, mock_port, work, otlp_port, tree=args.tree)
            script = write_script(work / "load.lua", model=arm.model, token=arm.token, stream=args.stream)
            warm = wrk_argv(arm.port, script, connections=args.concurrency, duration=3)
            subprocess.run(warm, capture_output=True, check=False, timeout=60)
            result = _profiled(args, arm, script, procs)
        finally:
            procs.stop_all()
    print(json.dumps(result), flush=True)
    return 0


def _profiled(args: argparse.Namespace, arm: arms_mod.Arm, script: Path, procs: Procs) -> dict[str, object]:
    before = roles_cpu_seconds(arm.roots)
    spy = None
    if not args.no_profile:
        argv = ["py-spy", "record", "--pid", str(arm.roots[0]), "--subprocesses", "--nonblocking"]
        argv += ["--rate", str(args.rate), "--duration", str(round(args.duration) + 1)]
        fmt = "raw" if args.out.suffix == ".txt" else "flamegraph"  # raw: collapsed stacks, for scripts
        argv += ["--format", fmt, "--output", str(args.out)]
        spy = procs.spawn("py-spy", argv)
        time.sleep(1.0)  # py-spy attaches to every process of the tree first
    load = wrk_argv(arm.port, script, connections=args.concurrency, duration=args.duration)
    done = subprocess.run(load, capture_output=True, text=True, check=False, timeout=args.duration + 60)
    after = roles_cpu_seconds(arm.roots)
    if spy is not None:
        spy.wait(timeout=60)
    result = parse_wrk(done.stdout)
    requests = max(1, int(result["requests"]))
    spent = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
    per_role = {role: seconds * 1000 / requests for role, seconds in by_role(spent).items()}
    return {
        "concurrency": args.concurrency,
        "stream": args.stream,
        "tree": str(args.tree or arms_mod.REPO),
        "otel": not args.no_otel,
        "requests": result["requests"],
        "rps": round(result["rps"], 1),
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "cpu_ms_per_req": {k: round(v, 3) for k, v in per_role.items()},
        "cpu_ms_per_req_total": round(sum(per_role.values()), 3),
        "profiled": spy is not None,
    }


if __name__ == "__main__":
    sys.exit(main())
