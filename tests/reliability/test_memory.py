"""Memory: 1,000 streams held open to the upstream at once, RSS summed over bmo's process tree.

Loopback only; every wait is bounded and every process is stopped in `finally`.
1,000 client tasks (one aiohttp session, no connection limit) each start one
long answer from the slow upstream (its own process). Once the upstream itself
counts 1,000 streams open at the same moment (so no pool, backlog or accept cap
held any back), the RSS of every process of `bmo serve` (granian's main process,
the worker, its tool-process guard, the projector) is summed over a few samples;
the bound is 300 MB.
Then every stream must end complete.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import BmoServer
from tests.reliability import harness as h
from tests.reliability.slow_stream_upstream import SlowStreamUpstream

pytestmark = pytest.mark.reliability

STREAMS = 1000
CHUNKS = 45
DELAY_MS = 1000  # each answer lasts ~45 s upstream: long enough to open all 1,000 on a loaded machine
TREE_RSS_BOUND_MB = 300
SAMPLES = 5


def _tree_rss(tree: h.ProcessTree) -> dict[str, float]:
    """RSS (MB) of each process of `bmo serve`, named by role."""
    projector = tree.projector()
    out: dict[str, float] = {}
    for pid in tree.pids():
        if pid == tree.root:
            role = "main"
        elif pid == projector:
            role = "projector"
        elif "process_guard" in tree.cmdline(pid):
            role = "tool-guard"  # reaps tool process groups if the worker dies
        else:
            role = f"worker-{pid}"
        out[role] = round(h.rss_mb(pid), 1)
    return out


async def _hold(
    server: BmoServer, upstream: SlowStreamUpstream, tree: h.ProcessTree
) -> tuple[list[h.StreamResult], dict[str, Any]]:
    seen: dict[str, Any] = {"samples": [], "upstream_open": 0, "held_at_s": None}
    async with h.client_session() as http:
        started = time.monotonic()
        tasks = []
        for i in range(STREAMS):
            tasks.append(
                asyncio.create_task(
                    h.stream_chat(
                        http, server, model="up1/fake-model", chunks=CHUNKS, delay_ms=DELAY_MS, timeout=240
                    )
                )
            )
            if i % 50 == 49:
                await asyncio.sleep(0.1)  # a ramp, not one SYN flood
        deadline = time.monotonic() + CHUNKS * DELAY_MS / 1000 - 5
        while time.monotonic() < deadline:  # until the upstream itself holds all of them
            opened = (await asyncio.to_thread(upstream.stats))["open"]
            seen["upstream_open"] = max(seen["upstream_open"], opened)
            if opened >= STREAMS:
                seen["held_at_s"] = round(time.monotonic() - started, 1)
                break
            await asyncio.sleep(0.5)
        if seen["held_at_s"] is not None:
            for _ in range(SAMPLES):
                rss = await asyncio.to_thread(_tree_rss, tree)
                opened = (await asyncio.to_thread(upstream.stats))["open"]
                seen["samples"].append({"rss": rss, "upstream_open": opened})
                await asyncio.sleep(1)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 300)
    return results, seen


@pytest.mark.timeout(600)
def test_1000_open_streams_fit_in_300_mb(
    make_server: Callable[..., BmoServer],
    tmp_path: Path,
    figures: Callable[[str, dict[str, Any]], None],
) -> None:
    with SlowStreamUpstream(tmp_path) as upstream:
        server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}, timeout_s=120))
        assert server.proc is not None
        tree = h.ProcessTree(server.proc.pid)
        assert tree.workers(), "no granian worker found"
        idle = _tree_rss(tree)
        results, seen = asyncio.run(_hold(server, upstream, tree))

        broken = [r for r in results if not r.complete]
        failures = collections.Counter(
            (r.status, (r.error or {}).get("code"), r.exception[:60], r.done) for r in broken
        )
        held = [s for s in seen["samples"] if s["upstream_open"] >= STREAMS]
        totals = [sum(s["rss"].values()) for s in held]
        peak = max(held, key=lambda s: sum(s["rss"].values()), default={"rss": {}})
        figures(
            "memory",
            {
                "streams": STREAMS,
                "upstream_max_open": seen["upstream_open"],
                "all_open_after_s": seen["held_at_s"],
                "tree_rss_idle_mb": round(sum(idle.values()), 1),
                "tree_rss_idle": idle,
                "tree_rss_max_mb": round(max(totals, default=0.0), 1),
                "tree_rss_at_max": peak["rss"],
                "samples_with_all_open": len(held),
                "streams_complete": len(results) - len(broken),
                "failures": {str(k): v for k, v in failures.most_common(5)},
            },
        )

        assert seen["held_at_s"] is not None, f"the upstream never held {STREAMS} streams: {seen}"
        assert len(held) >= 3, f"too few samples with all {STREAMS} open: {seen['samples']}"
        assert max(totals) <= TREE_RSS_BOUND_MB, peak
        assert not broken, f"{len(broken)} of {len(results)} streams incomplete: {failures.most_common(5)}"
