"""The PostgreSQL arm of `python -m bench.run --postgres`: one vs two bmo instances, one store.

A throwaway PostgreSQL cluster (tests/pg.py: Debian's `postgresql` package), a
fresh database per measurement, one or two real `bmo serve` processes on it, and
a closed-loop client spreading non-streaming `bmo/local` chats over them
(`bench.scale_out.run_arm`). The two arms alternate, `rounds` times, so that
background noise on a shared machine hits both alike, and each round's ratio
(two instances / one) is reported beside the raw figures: compare ratios within
one run, not absolute numbers across runs.

Per measurement: requests/s; CPU per request of the bmo process trees and of the
PostgreSQL server's processes (live ones: connections are pooled, so they last);
projection lag as events behind the head (sampled every 0.25 s) and as the time
the projectors took to reach the head seen at a sample. Raw results:
`bench/results/postgres.json`.

    python -m bench.run --postgres-only            # this arm alone
    python -m bench.pg_arm --seconds 12 --rounds 2 # the same, with its own knobs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scale_out import run_arm
from tests.pg import PgCluster

__all__ = ["main", "run_postgres_arm", "table"]

RESULTS = Path(__file__).resolve().parent / "results" / "postgres.json"
INSTANCES = (1, 2)
FIGURES = ("rps", "bmo_cpu_ms_per_req", "pg_cpu_ms_per_req", "lag_mean_events", "catch_up_ms_p50")


def run_postgres_arm(
    *, seconds: float = 12.0, clients: int = 16, rounds: int = 2, out: Path = RESULTS
) -> dict[str, Any]:
    """Measure, write `out`, print the table; returns the results."""
    started = time.monotonic()
    load_before = os.getloadavg()
    cluster = PgCluster().start()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bmo-pg-arm-") as tmp:
            for round_no in range(rounds):
                order = INSTANCES if round_no % 2 == 0 else tuple(reversed(INSTANCES))
                for n in order:
                    row = run_arm(cluster, n, clients, seconds, Path(tmp) / f"r{round_no}")
                    row["round"] = round_no + 1
                    rows.append(row)
                    print(
                        f"[pg arm] round {round_no + 1}, {n} instance(s): {row['rps']:.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        cluster.stop()
    results = {
        "meta": {
            "command": "python -m bench.pg_arm",
            "seconds": seconds,
            "clients": clients,
            "rounds": rounds,
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "elapsed_s": time.monotonic() - started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "rows": rows,
        "ratios": ratios(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    return results


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: each figure of two instances divided by one instance's."""
    by_round: dict[int, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["instances"]] = row
    out = []
    for round_no, arms in sorted(by_round.items()):
        one, two = arms.get(1), arms.get(2)
        if one is None or two is None:
            continue
        out.append({"round": round_no, **{k: (two[k] / one[k] if one[k] else None) for k in FIGURES}})
    return out


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"cores: {meta['cores']}, clients: {meta['clients']}, {meta['seconds']:.0f} s per measurement, "
        f"load average before: {meta['load_before'][0]:.1f}",
        "",
        "| round | instances | requests/s | bmo CPU ms/req | PostgreSQL CPU ms/req "
        "| lag mean / max (events) | catch-up p50 / max (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['round']} | {r['instances']} | {r['rps']:.0f} | {r['bmo_cpu_ms_per_req']:.2f} | "
            f"{r['pg_cpu_ms_per_req']:.2f} | {r['lag_mean_events']:.0f} / {r['lag_max_events']} | "
            f"{r['catch_up_ms_p50']:.0f} / {r['catch_up_ms_max']:.0f} |"
        )
    lines += ["", "| round | 2 / 1 requests/s | bmo CPU/req | PostgreSQL CPU/req | lag mean | catch-up p50 |"]
    lines.append("|---|---|---|---|---|---|")
    for q in results["ratios"]:
        cells = " | ".join("—" if q[k] is None else f"{q[k]:.2f}" for k in FIGURES)
        lines.append(f"| {q['round']} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="per measurement (default 12)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run_postgres_arm(seconds=args.seconds, clients=args.clients, rounds=args.rounds, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
