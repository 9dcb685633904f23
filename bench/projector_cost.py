"""What the projector costs per event: a store written by real requests, projected from scratch.

Starts the mock and `bmo serve` as the bench does, sends `--requests` chat completions
(one connection), stops bmo, then projects a copy of its `events.db` into a fresh
read-model database in this process, several times, and reports CPU per event and per
request, split into reading (select + decode), projecting (pure functions) and
applying (SQL) - the work `bmo projections run` does for each commit it is rung for.

    python -m bench.projector_cost --requests 2000 --batch 500
    python -m bench.projector_cost --store /tmp/store   # write the store once, reuse it after

`--store DIR` keeps the written store in DIR and, when DIR already holds one, projects
it without starting anything: before/after comparisons then project the very same events.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.arms import start_bmo, start_mock
from bench.procs import Procs
from bench.tail import timed_requests

__all__ = ["main", "project_timed"]


def project_timed(events_db: Path, read_db: Path, batch: int) -> dict[str, Any]:
    """Project every event of `events_db` into a fresh `read_db`; thread CPU per phase."""
    from app.events.store import EventStore
    from app.projections import runner as runner_module
    from app.projections.rows import apply_ops
    from app.projections.runner import ProjectionRunner, project_all

    store = EventStore(events_db)
    runner = ProjectionRunner(store, read_db, ledger_capacity=10_000, batch_size=batch)
    phases = {"read": 0.0, "project": 0.0, "apply": 0.0}
    read = runner._notes.read

    def timed_read(after: int, limit: int) -> Any:
        started = time.thread_time()
        notes = read(after, limit)
        phases["read"] += time.thread_time() - started
        return notes

    def timed_project(event: Any, position: int) -> Any:
        started = time.thread_time()
        ops = project_all(event, position)
        phases["project"] += time.thread_time() - started
        return ops

    def timed_apply(conn: Any, ops: Any) -> None:
        started = time.thread_time()
        apply_ops(conn, ops)
        phases["apply"] += time.thread_time() - started

    runner._notes.read = timed_read  # type: ignore[method-assign]
    originals = runner_module.project_all, runner_module.apply_ops
    runner_module.project_all, runner_module.apply_ops = timed_project, timed_apply  # type: ignore[assignment]
    try:
        started = time.thread_time()
        steps = 0
        while runner.step():
            steps += 1
        total = time.thread_time() - started
    finally:
        runner_module.project_all, runner_module.apply_ops = originals
    events = runner.position
    runner.close()
    store.close()
    phases["commit_and_rest"] = total - sum(phases.values())
    return {"events": events, "steps": steps, "cpu_s": total, "phases_s": phases}


def write_store(work: Path, target: Path, requests: int) -> None:
    """Serve `requests` chat completions through a real `bmo serve`; copy its event store to `target`."""
    procs = Procs(work)
    try:
        mock_port, _ = start_mock(procs, "mock")
        arm = start_bmo(procs, mock_port, work, None)
        timed_requests(arm.port, arm.token, arm.model, requests)
        procs.stop(procs.children[-1])
    finally:
        procs.stop_all()
    assert arm.data_dir is not None
    target.mkdir(parents=True, exist_ok=True)
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        if (arm.data_dir / name).exists():
            shutil.copy(arm.data_dir / name, target / name)


def _fired_count(events_db: Path) -> int:
    """The requests in a store (one `Fired` each), so a reused store reports per request right."""
    with sqlite3.connect(events_db) as conn:
        count: int = conn.execute(
            "SELECT count(*) FROM stored_events WHERE topic = 'app.events.run:Fired'"
        ).fetchone()[0]
    return count


def main(argv: list[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500, help="notifications per step (the runner's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", type=Path, help="keep the written store here; reuse it if present")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bmo-projcost-") as tmp:
        work = Path(tmp)
        source = args.store if args.store is not None else work / "store"
        if not (source / "events.db").exists():
            write_store(work, source, args.requests)
        requests = _fired_count(source / "events.db")
        runs = []
        for i in range(args.repeat):
            copy = work / f"copy-{i}"
            copy.mkdir()
            for name in ("events.db", "events.db-wal", "events.db-shm"):
                if (source / name).exists():
                    shutil.copy(source / name, copy / name)
            runs.append(project_timed(copy / "events.db", copy / "read_models.db", args.batch))
    best = min(runs, key=lambda r: r["cpu_s"])
    per_event_us = best["cpu_s"] * 1e6 / best["events"]
    result = {
        "requests": requests,
        "events": best["events"],
        "events_per_request": best["events"] / requests,
        "steps": best["steps"],
        "cpu_us_per_event": per_event_us,
        "cpu_us_per_request": best["cpu_s"] * 1e6 / requests,
        "phases_us_per_event": {k: v * 1e6 / best["events"] for k, v in best["phases_s"].items()},
        "all_runs_cpu_s": [r["cpu_s"] for r in runs],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
