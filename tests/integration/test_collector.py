"""A serving process freezes its start-up objects and collects young objects often.

CPython's gen-0 counter is allocations minus deallocations: while mid-lived objects
(a stream's state lives 6-10 s) keep being born and dying, the two nearly cancel and,
at the default thresholds, the young generation grows to tens of thousands of objects
before it is collected: 20-70 ms pauses of the whole worker under 500 streams (see
`tune_collector` and docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator
from pathlib import Path

from app.bootstrap import GC_THRESHOLDS, build_runtime
from app.config import Settings


@contextlib.contextmanager
def _restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _start_and_stop(tmp_path: Path) -> tuple[tuple[int, int, int], int]:
    async def run() -> tuple[tuple[int, int, int], int]:
        runtime = build_runtime(Settings(), tmp_path / "data")
        await runtime.start()
        try:
            return gc.get_threshold(), gc.get_freeze_count()
        finally:
            await runtime.stop()

    result: list[tuple[tuple[int, int, int], int]] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(run())))  # no signal handlers
    worker.start()
    worker.join(60)
    assert result, "the runtime did not start and stop within 60 s"
    return result[0]


def test_a_started_runtime_freezes_start_up_objects_and_tunes_the_collector(tmp_path: Path) -> None:
    with _restored_collector():
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        thresholds, frozen = _start_and_stop(tmp_path)
    assert thresholds == GC_THRESHOLDS
    assert frozen > 10_000, frozen  # modules, the app: never scanned again
