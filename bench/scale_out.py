"""`python -m bench.scale_out`: one vs two bmo instances on one PostgreSQL store.

A throwaway PostgreSQL cluster (tests/pg.py), a fresh database per arm, N real
`bmo serve` processes on it, and a closed-loop asyncio client spreading
non-streaming `bmo/local` chats over the instances. Per arm: requests/s, CPU
seconds per 1,000 requests of the bmo process trees and of PostgreSQL, and the
projection lag (store head minus the projector's position) sampled every 0.25 s.
Everything runs on this machine: the client, bmo and PostgreSQL share its cores,
so the figures show the cost per request and the lag, not what more hosts buy.

    python -m bench.scale_out --seconds 15 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.procs import tree_cpu_seconds
from tests.e2e.server import BmoServer
from tests.pg import PgCluster, database_url

__all__ = ["main", "run_arm"]


def _postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


async def _drive(servers: list[BmoServer], clients: int, seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + seconds
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": "hello"}]}

    async def client(i: int) -> None:
        nonlocal done
        server = servers[i % len(servers)]
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=60) as h:
            while time.monotonic() < deadline:
                response = await h.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                done += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


_HEAD = "SELECT COALESCE(max(notification_id), 0) FROM bmo_events"
_PROJECTED = "SELECT COALESCE(max(position), 0) FROM projection_tracking"


async def _scalar(conn: psycopg.AsyncConnection[Any], sql: str) -> int:
    row = await (await conn.execute(sql)).fetchone()
    return int(row[0]) if row else 0


async def _lag(url: str, stop: asyncio.Event, samples: list[int], catch_up_ms: list[float]) -> None:
    """Every 0.25 s: the lag in events (head minus projected), and how long the projectors
    took to reach the head seen then (polled every 5 ms; a sample cut off by the end of the
    run is dropped)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            started = time.monotonic()
            head = await _scalar(conn, _HEAD)
            projected = await _scalar(conn, _PROJECTED)
            samples.append(max(0, head - projected))
            while projected < head and not stop.is_set():
                await asyncio.sleep(0.005)
                projected = await _scalar(conn, _PROJECTED)
            if projected >= head:
                catch_up_ms.append(1000 * (time.monotonic() - started))
            await asyncio.sleep(0.25)


def run_arm(cluster: PgCluster, n: int, clients: int, seconds: float, workdir: Path) -> dict[str, Any]:
    with database_url(cluster) as url:
        servers = []
        try:
            for i in range(n):
                workspace = workdir / f"ws-{n}-{i}"
                (workspace / ".git").mkdir(parents=True)
                servers.append(
                    BmoServer(
                        workspace=workspace,
                        data_dir=workdir / f"data-{n}-{i}",
                        extra_env={"BMO_STORE_URL": url},
                    ).start()
                )
            asyncio.run(_drive(servers, clients, 2.0))  # warm-up
            roots = [s.proc.pid for s in servers if s.proc is not None]
            bmo0, pg0 = tree_cpu_seconds(roots).seconds, tree_cpu_seconds([_postmaster_pid(cluster)]).seconds

            async def measured() -> tuple[int, list[int], list[float]]:
                stop, samples, catch_up = asyncio.Event(), [], []
                lag = asyncio.create_task(_lag(url, stop, samples, catch_up))
                count = await _drive(servers, clients, seconds)
                stop.set()
                await lag
                return count, samples, catch_up

            count, lags, catch_up = asyncio.run(measured())
            bmo1, pg1 = tree_cpu_seconds(roots).seconds, tree_cpu_seconds([_postmaster_pid(cluster)]).seconds
        finally:
            for server in servers:
                server.stop()
    return {
        "instances": n,
        "requests": count,
        "rps": count / seconds,
        "bmo_cpu_ms_per_req": 1000 * (bmo1 - bmo0) / max(count, 1),
        "pg_cpu_ms_per_req": 1000 * (pg1 - pg0) / max(count, 1),
        "lag_max_events": max(lags, default=0),
        "lag_mean_events": sum(lags) / max(len(lags), 1),
        "catch_up_ms_p50": _quantile(catch_up, 0.5),
        "catch_up_ms_max": max(catch_up, default=0.0),
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    cluster = PgCluster().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bmo-scale-") as tmp:
            rows = [run_arm(cluster, n, args.clients, args.seconds, Path(tmp)) for n in (1, 2)]
    finally:
        cluster.stop()
    print(f"cores: {os.cpu_count()}, clients: {args.clients}, {args.seconds:.0f} s per arm")
    print("| instances | requests/s | bmo CPU ms/req | PostgreSQL CPU ms/req | lag max (events) | lag mean |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['instances']} | {r['rps']:.0f} | {r['bmo_cpu_ms_per_req']:.2f} | "
            f"{r['pg_cpu_ms_per_req']:.2f} | {r['lag_max_events']} | {r['lag_mean_events']:.0f} |"
        )


if __name__ == "__main__":
    main()
