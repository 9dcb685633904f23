"""What the writer tells the rest of the service about a store incident, and what it holds.

The posture endpoint, the persist_failed/recovered records and the outbox bound all read
these figures; each test drives a real SQLite store that fails on demand (a switch file,
as `BMO_TEST_APPEND_FAULTS` does) and checks the writer's public state and hooks.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError

from app.commands import append_content, fire_run
from app.commands.append_content import AppendContent
from app.events.faults import FaultInjectingStore
from app.events.run import RunState, fold
from app.events.writer import EventWriter, PersistenceState, PersistFailed
from tests.core.helpers import fire_cmd, now


class CountingStore(FaultInjectingStore):
    """The real fault seam, counting the saves it refused (a test's view of the retries)."""

    refused = 0

    def save(self, events: Sequence[DomainEvent]) -> int:
        try:
            return super().save(events)
        except sqlite3.OperationalError:
            self.refused += 1
            raise


def events(n: int = 1) -> list[DomainEvent]:
    """`n` runs fired: one event each."""
    out: list[DomainEvent] = []
    for _ in range(n):
        run_id = uuid4()
        out.extend(fire_run.decide(RunState(run_id), fire_cmd(run_id)))
    return out


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def run(body: Callable[[CountingStore, Path], Awaitable[None]], tmp: Path) -> None:
    switch = tmp / "faults-on"
    store = CountingStore(tmp / "events.db", switch)

    async def main() -> None:
        await asyncio.wait_for(body(store, switch), timeout=60)

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_an_incident_is_reported_once_counted_and_flushed(tmp_path: Path) -> None:
    async def body(store: CountingStore, switch: Path) -> None:
        reported: list[tuple[int, str]] = []
        recovered: list[PersistenceState] = []
        commits: list[int] = []
        writer = EventWriter(
            store,
            on_failure=lambda evs, error: reported.append((len(evs), error)),
            on_recovered=lambda state: recovered.append(replace(state)),
            on_commit=commits.append,
        )
        writer.start()
        first = writer.submit(events(1))
        assert await first == 1 and commits == [1] and writer.position == 1
        switch.touch()
        a, b = writer.submit(events(2)), writer.submit(events(1))
        await until(lambda: store.refused >= 3)  # retried with backoff, still failing
        state = writer.state
        assert state.degraded
        assert (
            store.refused - 1 <= state.failures <= store.refused
        )  # one per refused save (one may be in flight)
        assert state.last_error is not None and state.last_error.startswith("OperationalError: injected")
        assert reported == [(3, state.last_error)]  # once per submission, not once per retry
        assert not a.done() and not b.done() and not recovered
        switch.unlink()
        assert await a == await b == 4
        assert writer.position == 4 and commits[-1] == 4
        assert writer.state.degraded is False  # posture reports it as JSON: false, not null
        assert writer.state.flushed_after_failure == 3 and writer.state.incident_flushed == 3
        assert len(recovered) == 1 and recovered[0].incident_flushed == 3 and not recovered[0].degraded
        # a second incident: the total grows, the incident's own figures start again
        switch.touch()
        c = writer.submit(events(2))
        await until(lambda: writer.state.degraded)
        switch.unlink()
        assert await c == 6
        assert writer.state.flushed_after_failure == 5 and writer.state.incident_flushed == 2
        assert len(recovered) == 2 and len(reported) == 2
        await writer.close()

    run(body, tmp_path)


def test_an_incident_that_overflowed_reports_it_then_starts_the_next_at_zero(tmp_path: Path) -> None:
    async def body(store: CountingStore, switch: Path) -> None:
        recovered: list[PersistenceState] = []
        writer = EventWriter(store, outbox_limit=2, on_recovered=lambda s: recovered.append(replace(s)))
        writer.start()
        switch.touch()
        dropped = writer.submit(events(1))
        kept = [writer.submit(events(1)) for _ in range(2)]
        with pytest.raises(RuntimeError, match="overflowed"):
            await dropped
        assert writer.state.overflowed_events == 1 and writer.state.incident_overflowed == 1
        await until(lambda: writer.state.degraded)
        switch.unlink()
        assert [await k for k in kept] == [2, 2]
        assert recovered[-1].incident_overflowed == 1  # what the recovery record reports
        assert writer.state.incident_overflowed == 0 and writer.state.overflowed_events == 1
        await writer.close()

    run(body, tmp_path)


def test_the_outbox_bound_counts_only_what_is_unsaved(tmp_path: Path) -> None:
    """Events already saved leave the count: a later incident may hold `outbox_limit` of its own."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store, outbox_limit=4)
        writer.start()
        for _ in range(3):
            await writer.submit(events(2))  # 6 saved, more than the limit in all
        switch.touch()
        held = [writer.submit(events(1)) for _ in range(4)]
        await until(lambda: store.refused >= 1)
        assert writer.state.overflowed_events == 0
        switch.unlink()
        assert [await h for h in held] == [10, 10, 10, 10]
        await writer.close()

    run(body, tmp_path)


def test_a_durable_submission_fails_with_the_stores_error_and_leaves_the_outbox(tmp_path: Path) -> None:
    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store, unavailable_wait_s=0.1, outbox_limit=3)
        writer.start()
        switch.touch()
        durable = writer.submit(events(2), durable=True)
        with pytest.raises(PersistFailed) as failed:
            await durable
        assert failed.value.reason == writer.state.last_error
        kept = [writer.submit(events(1)) for _ in range(3)]  # the failed two no longer count
        assert writer.state.overflowed_events == 0
        switch.unlink()
        assert [await k for k in kept] == [3, 3, 3]
        assert writer.state.flushed_after_failure == 3  # the failed durable events were never saved
        await writer.close()

    run(body, tmp_path)


@pytest.mark.timeout(120)  # about 3 s of real backoff: more than the mutation run's per-test --timeout
def test_a_durable_submission_fails_soon_after_its_wait_not_after_the_backoff(tmp_path: Path) -> None:
    """The retry sleep is cut at the deadline: with a 2 s backoff cap, a 0.5 s wait fails well before 2 s."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store, unavailable_wait_s=0.5)
        writer.start()
        switch.touch()
        background = writer.submit(events(1))  # keeps the writer retrying with growing backoff
        await until(lambda: store.refused >= 5)  # backoff has reached 0.8 s and more
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PersistFailed):
            await writer.submit(events(1), durable=True)
        assert loop.time() - started < 1.9  # the uncut backoff would be 1.6-2 s past the 0.5 s wait
        switch.unlink()
        assert await background == 1
        await writer.close()

    run(body, tmp_path)


def test_an_empty_submission_is_done_at_once(tmp_path: Path) -> None:
    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store)
        writer.start()
        assert await writer.submit([]) == 0
        assert await writer.flush(1)
        await writer.close()

    run(body, tmp_path)


def test_a_conflict_refuses_the_submissions_chained_on_it_and_nothing_else(tmp_path: Path) -> None:
    """In one batch: a stale first event of stream T, the next event of T decided on it, another
    stream. T's two are refused (the second would land after the other writer's event), the
    other is saved, the executor is told about T at once, and T's next fresh submission is saved.
    """

    async def body(store: CountingStore, switch: Path) -> None:
        taken = uuid4()
        store.save(fire_run.decide(RunState(taken), fire_cmd(taken)))  # another writer took version 1
        told: list[set] = []
        writer = EventWriter(store, on_conflict=told.append)
        writer.start()
        stale_first = fire_run.decide(RunState(taken), fire_cmd(taken))
        state = fold(taken, list(stale_first))
        chained = append_content.decide(state, AppendContent(run_id=taken, at=now(), text="lost"))
        other = events(1)
        futures = [writer.submit(stale_first), writer.submit(chained), writer.submit(other)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(results[0], IntegrityError) and isinstance(results[1], IntegrityError)
        assert results[2] == 2 and writer.position == 2
        assert told == [{taken}]
        assert [type(e).__name__ for e in store.stream(taken)] == ["Fired"]
        assert len(store.stream(other[0].originator_id)) == 1
        fresh = append_content.decide(
            fold(taken, store.stream(taken)), AppendContent(run_id=taken, at=now(), text="kept")
        )
        assert await writer.submit(fresh) == 3
        assert [type(e).__name__ for e in store.stream(taken)] == ["Fired", "ContentAppended"]
        await writer.close()

    run(body, tmp_path)


def test_a_batch_with_a_conflict_still_saves_the_rest_one_by_one_in_order(tmp_path: Path) -> None:
    async def body(store: CountingStore, switch: Path) -> None:
        taken = uuid4()
        store.save(fire_run.decide(RunState(taken), fire_cmd(taken)))
        commits: list[int] = []
        writer = EventWriter(store, on_commit=commits.append)
        writer.start()
        before, after = events(2), events(1)
        futures = [
            writer.submit(before[:1]),
            writer.submit(before[1:]),
            writer.submit(fire_run.decide(RunState(taken), fire_cmd(taken))),
            writer.submit(after),
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[:2] == [2, 3] and isinstance(results[2], IntegrityError) and results[3] == 4
        assert commits == [2, 3, 4]
        assert await writer.flush(5)
        await writer.close()

    run(body, tmp_path)


def test_a_submission_chained_on_a_refused_one_is_refused_in_a_later_batch_too(tmp_path: Path) -> None:
    """The chained event is submitted while the stale one's save is in flight (a store seam holds
    that save), so it lands in the next batch: it is still refused, and other streams are saved."""
    import threading

    taken = uuid4()

    class HeldStore(FaultInjectingStore):
        def __init__(self, *a: object) -> None:
            super().__init__(*a)  # type: ignore[arg-type]
            self.started, self.go = threading.Event(), threading.Event()

        def save(self, events: Sequence[DomainEvent]) -> int:
            if any(e.originator_id == taken for e in events) and not self.go.is_set():
                self.started.set()
                self.go.wait(20)
            return super().save(events)

    async def main() -> None:
        store = HeldStore(tmp_path / "events.db", tmp_path / "faults-on")
        store.go.set()
        store.save(fire_run.decide(RunState(taken), fire_cmd(taken)))  # another writer took version 1
        store.go.clear()
        writer = EventWriter(store)
        writer.start()
        stale_first = fire_run.decide(RunState(taken), fire_cmd(taken))
        chained = append_content.decide(
            fold(taken, list(stale_first)), AppendContent(run_id=taken, at=now(), text="lost")
        )
        first = writer.submit(stale_first)
        assert await asyncio.to_thread(store.started.wait, 20)  # its save is in flight
        later = writer.submit(chained)  # the next batch holds only this stale one
        store.go.set()
        results = await asyncio.gather(first, later, return_exceptions=True)
        assert isinstance(results[0], IntegrityError) and isinstance(results[1], IntegrityError)
        assert isinstance(await writer.submit(events(1)), int)  # the writer goes on
        assert [type(e).__name__ for e in store.stream(taken)] == ["Fired"]
        await writer.close()
        store.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_landed_waits_at_most_its_timeout_for_a_save_that_has_not_happened(tmp_path: Path) -> None:
    """A submission nobody saved yet (the writer is not running): landed() gives up at its timeout
    and says so; once the writer saves it, it has landed."""

    async def body(store: CountingStore, switch: Path) -> None:
        writer = EventWriter(store)
        done = writer.submit(events(1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await writer.landed(done, timeout=0.2)
        assert loop.time() - started >= 0.2
        writer.start()
        assert await writer.landed(done, timeout=20)
        await writer.close()

    run(body, tmp_path)
