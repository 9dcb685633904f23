"""Projection lag under open-loop load, before/after: `bench.openloop load` and `lag` side by side.

The same pair of tools `bench.run` uses for its "projection lag at 500 RPS" row, against
`bmo serve` started from each `--tree` in turn (interleaved rounds, one mock):
`load` offers `--rate` requests a second; `lag` sends one probe request every 50 ms
and times from its response to its row in the ledger (`GET /v1/openai-compat/runs`).

    python -m bench.lag --rate 500 --duration 10 --rounds 2 --tree /tmp/before --tree .
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.arms import PROBE_MODEL, REPO, start_bmo, start_mock
from bench.procs import Procs, tree_cpu_seconds

__all__ = ["main"]


def _last_json(out: str) -> dict[str, Any]:
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    return dict(json.loads(line))


def _once(procs: Procs, work: Path, tree: Path, mock_port: int, args: argparse.Namespace) -> dict[str, Any]:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        arm = start_bmo(procs, mock_port, work, None)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    common = ["--port", str(arm.port), "--token", arm.token, "--duration", str(args.duration)]
    load = [sys.executable, "-m", "bench.openloop", "load", *common, "--model", arm.model]
    load += ["--rate", str(args.rate), "--drain", "5"]
    lag = [sys.executable, "-m", "bench.openloop", "lag", *common, "--model", f"mock/{PROBE_MODEL}"]
    try:
        cpu0 = tree_cpu_seconds(arm.roots).seconds
        (_, load_out), (_, lag_out) = procs.run_tools([load, lag], cwd=REPO, timeout=args.duration + 40)
        cpu = tree_cpu_seconds(arm.roots).seconds - cpu0
    finally:
        procs.stop(procs.children[-1])
    loaded, lagged = _last_json(load_out), _last_json(lag_out)
    return {
        "rps": round(loaded["achieved_rps"], 1),
        "errors": loaded["errors"],
        "dropped": loaded["dropped"],
        "lag_ms": lagged["lag_ms"],
        "lag_timeouts": lagged["timeouts"],
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tree", action="append", type=Path, help="a checkout whose app/ to run")
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [REPO])]
    results: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="bmo-lag-") as tmp:
        procs = Procs(Path(tmp))
        try:
            mock_port, _ = start_mock(procs, "mock")
            for rnd in range(args.rounds):
                for i, tree in enumerate(trees):
                    run = _once(procs, Path(tmp) / f"r{rnd}-{i}", tree, mock_port, args)
                    results[str(tree)].append(run)
                    lag = run["lag_ms"]
                    print(
                        f"round {rnd} {tree}: {run['rps']} RPS, lag p50 {lag['p50']:.1f} "
                        f"p99 {lag['p99']:.1f} max {lag['max']:.1f} ms "
                        f"(n={lag['n']}, timeouts {run['lag_timeouts']})",
                        flush=True,
                    )
        finally:
            procs.stop_all()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
