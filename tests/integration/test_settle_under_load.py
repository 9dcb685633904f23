"""An operator read waits for what was written before it asked, never for later client writes.

`Runtime.settle` runs before every operator read (posture, ledger, timelines,
permissions). Under steady client traffic the writer always has a batch pending,
so a settle that waited for the writer to be idle waited out its whole timeout
(the 200-1,000 ms posture/ledger tails seen under 500 streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from app.bootstrap import build_runtime
from app.config import Settings
from app.projections import runs
from app.projections.db import open_read_db, read_db_path
from tests.integration.test_store_and_projector import fire_run_events

SAVE_S = 0.02  # each group commit takes this long (a loaded disk)...
SUBMIT_EVERY_S = 0.005  # ...and clients submit more meanwhile: the writer is never idle


async def _busy_writer(writer, stop: asyncio.Event) -> int:  # type: ignore[no-untyped-def]
    """Steady client writes, like streams appending their content."""
    n = 0
    while not stop.is_set():
        writer.submit(list(fire_run_events()))
        n += 1
        await asyncio.sleep(SUBMIT_EVERY_S)
    return n


def _slow_saves(store) -> None:  # type: ignore[no-untyped-def]
    save = store.save

    def slow(events):  # type: ignore[no-untyped-def]
        time.sleep(SAVE_S)
        return save(events)

    store.save = slow


def test_settle_sees_earlier_writes_without_waiting_for_later_ones(tmp_path: Path) -> None:
    runtime = build_runtime(Settings(), tmp_path / "data")
    reads = open_read_db(read_db_path(tmp_path / "data")).conn
    _slow_saves(runtime.store)

    async def scenario() -> tuple[list[float], int]:
        runtime.writer.start()
        runtime.projector.start()
        stop = asyncio.Event()
        producer = asyncio.create_task(_busy_writer(runtime.writer, stop))
        waits: list[float] = []
        try:
            for _ in range(5):
                await asyncio.sleep(0.05)
                mine = fire_run_events()  # "the request that just ended", written before the read
                runtime.writer.submit(list(mine))
                started = time.perf_counter()
                await runtime.settle()
                waits.append(time.perf_counter() - started)
                assert runs.get_run(reads, mine[0].originator_id.hex) is not None, "settle missed a write"
        finally:
            stop.set()
            written = await producer
            with contextlib.suppress(Exception):
                await runtime.writer.close()
                await runtime.projector.stop()
        return waits, written

    waits, written = asyncio.run(scenario())
    runtime.store.close()
    assert written > 20, "the writer was not kept busy"
    # The default settle timeout is 2 s: waiting for an idle writer shows as ~2 s per read.
    assert max(waits) < 0.5, [round(w, 3) for w in waits]
