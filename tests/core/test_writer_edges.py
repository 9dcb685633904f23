"""The writer's edges the mutation run found untested: the outbox bound's arithmetic, the pace
of retries against a failing store, flush with a save in flight, and shutdown.

Each test drives a real SQLite store through the fault seam (`FaultInjectingStore`, a switch
file) or holds a save in its worker thread, and checks what callers see.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from eventsourcing.domain import DomainEvent

from app.events.faults import FaultInjectingStore
from app.events.writer import EventWriter, PersistFailed
from tests.core.test_writer_accounting import CountingStore, events, run


class HeldStore(FaultInjectingStore):
    """Saves wait in their worker thread while `gate` is closed (a slow disk, deterministically)."""

    def __init__(self, *a: object) -> None:
        super().__init__(*a)  # type: ignore[arg-type]
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()

    def save(self, events: Sequence[DomainEvent]) -> int:
        if not self.gate.is_set():
            self.started.set()
            self.gate.wait(30)
        return super().save(events)


def held(body, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    store = HeldStore(tmp / "events.db", tmp / "faults-on")

    async def main() -> None:
        try:
            await asyncio.wait_for(body(store), timeout=60)
        finally:
            store.gate.set()  # never leave a worker thread blocked (asyncio.run joins them)

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_the_outbox_drops_whole_oldest_submissions_and_always_keeps_the_newest(tmp_path: Path) -> None:
    """Over the bound, the oldest submissions go (counted per event, summed over the incident),
    never the only one left, even when it alone is over the bound."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store, outbox_limit=2)
        writer.start()
        switch.touch()
        first = writer.submit(events(2))
        second = writer.submit(events(2))  # 4 held: the first goes, two were left
        assert first.done() and not second.done()
        alone = writer.submit(events(3))  # 5 held: the second goes; this one stays though over 2
        assert second.done() and not alone.done()
        for dropped in (first, second):
            with pytest.raises(RuntimeError, match="overflowed"):
                await dropped
        assert writer.state.overflowed_events == 4 and writer.state.incident_overflowed == 4
        switch.unlink()
        assert await alone == 3  # the newest submission is saved once the store recovers
        await writer.close()

    run(body, tmp_path)


def test_a_failing_store_is_retried_with_growing_pauses_not_in_a_tight_loop(tmp_path: Path) -> None:
    """Backoff from 0.05 s, doubling: over a 0.6 s wait that is about six attempts. A load on the
    machine only makes fewer; retrying without a pause (or with shrinking ones) makes hundreds."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store, unavailable_wait_s=0.6)
        writer.start()
        switch.touch()
        with pytest.raises(PersistFailed):
            await writer.submit(events(1), durable=True)
        assert 1 <= store.refused <= 15
        switch.unlink()
        await writer.close()

    run(body, tmp_path)


def test_flush_waits_for_a_submission_made_while_a_save_was_in_flight(tmp_path: Path) -> None:
    async def body(store: HeldStore) -> None:
        writer = EventWriter(store)
        writer.start()
        store.gate.clear()
        first = writer.submit(events(1))
        assert await asyncio.to_thread(store.started.wait, 20)  # its save is in its thread
        second = writer.submit(events(1))  # pending while the first is saved
        store.gate.set()
        assert await writer.flush(20)
        assert first.done() and second.done() and second.result() == 2
        await writer.close()

    held(body, tmp_path)


def test_flush_and_close_give_up_at_their_timeout_on_a_save_stuck_in_its_thread(tmp_path: Path) -> None:
    """A save that hangs (a stuck disk) must not hang shutdown: flush says False at its timeout,
    close returns after its timeout with the writer's task stopped."""

    async def body(store: HeldStore) -> None:
        writer = EventWriter(store)
        writer.start()
        store.gate.clear()
        writer.submit(events(1))
        assert await asyncio.to_thread(store.started.wait, 20)
        assert await asyncio.wait_for(writer.flush(0.1), 5) is False
        await asyncio.wait_for(writer.close(timeout=0.1), 5)
        assert writer._task is not None and writer._task.done()

    held(body, tmp_path)


def test_close_stops_the_writers_task(tmp_path: Path) -> None:
    """Nothing saved, nothing in flight: close still ends the background task before it returns
    (the store is closed next, and a live writer would save into a closed store)."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store)
        writer.start()
        await writer.close()
        assert writer._task is not None and writer._task.done()

    run(body, tmp_path)
