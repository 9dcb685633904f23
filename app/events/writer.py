"""The one writer: group commit off the event loop, and an outbox on failure.

`submit` never blocks the request: events join a pending batch, and a single
background task saves everything pending in one SQLite transaction on a
worker thread. A save that fails for an environmental reason (disk full,
read-only or locked database) leaves its events queued (a bounded outbox),
sets the sticky degraded flag and is retried with backoff; the next
successful save flushes the outbox and clears the flag. A durable submission
(its caller waits on it) is not kept for ever: once the store has failed it
for `unavailable_wait_s` it fails with `PersistFailed` (the caller answers
503), so a waiting request never outlives the configured wait. A stale-version
conflict (`IntegrityError`) is the caller's business: only that submission's
future fails, and with it every later submission on the same stream that was
made before the conflict came to light (each was decided on the state the
refused one left behind: saved, they would land after the other writer's
events, e.g. a run's content after another instance's `Finished`). `on_conflict`
tells the executor at once, so nothing more is decided on that stale state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError

from app.errors import PersistFailed  # the error tree's, raised here
from app.events.store import EventStore

__all__ = ["EventWriter", "PersistFailed", "PersistenceState"]

FailureHook = Callable[[Sequence[DomainEvent], str], None]
RecoveryHook = Callable[["PersistenceState"], None]


@dataclass(slots=True)
class _Submission:
    events: tuple[DomainEvent, ...]
    done: asyncio.Future[int]
    durable: bool = False  # its caller waits: fail it at `deadline` rather than keep it in the outbox
    deadline: float = 0.0  # loop time after which a failing store fails a durable submission
    reported: bool = False  # a persist_failed record was emitted for it
    seq: int = 0  # order of submission (stale chains are the ones made before a conflict)


@dataclass(slots=True)
class PersistenceState:
    """The sticky degraded flag and what the outbox went through."""

    degraded: bool = False
    last_error: str | None = None
    failures: int = 0
    overflowed_events: int = 0
    flushed_after_failure: int = 0
    incident_flushed: int = 0  # this incident: events written once the store recovered
    incident_overflowed: int = 0  # this incident: events the outbox had to drop


@dataclass
class EventWriter:
    store: EventStore
    on_commit: Callable[[int], None] = lambda _position: None
    on_failure: FailureHook = lambda _events, _error: None
    on_recovered: RecoveryHook = lambda _state: None
    on_conflict: Callable[[set[UUID]], None] = lambda _streams: None
    outbox_limit: int = 20_000  # events held while the store is failing
    unavailable_wait_s: float = 5.0  # a durable submission waits this long for a failing store
    backoff_cap_s: float = 2.0  # the longest pause between two retries of a failing save
    state: PersistenceState = field(default_factory=PersistenceState)
    position: int = 0  # last notification id this writer committed
    _pending: list[_Submission] = field(default_factory=list)
    _held: int = 0  # events in _pending (kept as a count: summing per submit is quadratic)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _failing: asyncio.Event = field(default_factory=asyncio.Event)  # set while degraded
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _saving: asyncio.Future[int] | None = None
    _submitted: int = 0
    _stale_before: dict[UUID, int] = field(default_factory=dict)  # stream -> first fresh submission

    def start(self) -> None:
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-writer")

    def submit(self, events: Sequence[DomainEvent], *, durable: bool = False) -> asyncio.Future[int]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not events:
            done.set_result(0)
            return done
        deadline = asyncio.get_running_loop().time() + self.unavailable_wait_s
        self._submitted += 1
        self._pending.append(_Submission(tuple(events), done, durable, deadline, seq=self._submitted))
        self._held += len(events)
        self._trim_outbox()
        self._idle.clear()
        self._wake.set()
        return done

    async def landed(self, done: asyncio.Future[int], timeout: float) -> bool:
        """Wait until the submission `done` was saved or refused, unless the store is failing
        (then its events wait in the outbox and waiting would only stall the caller).
        True when it is settled."""
        if not done.done() and not self.state.degraded:
            failing: asyncio.Future[Any] = asyncio.ensure_future(self._failing.wait())
            waiting: set[asyncio.Future[Any]] = {done, failing}
            try:
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                failing.cancel()
        return done.done()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is saved (or timeout)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def saved_through(self, timeout: float | None = None) -> int:
        """The store position that covers everything submitted before this call, once saved.

        Unlike `flush`, later submissions are not waited for: under steady traffic the
        writer is never idle, and a reader that only needs to see what happened before
        it asked would otherwise wait behind every later write. A failing store is not
        waited for either (its outbox is retried in the background; the degraded flag
        says so). Returns at `timeout` with what was saved by then.
        """
        position = self.position
        if self.state.degraded:
            return position
        waiting = [s.done for s in self._pending if not s.done.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        for done in waiting:
            if done.done() and not done.cancelled() and done.exception() is None:
                position = max(position, done.result())
        return position

    async def close(self, timeout: float = 5.0) -> None:
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._saving is not None:  # a save still running in its thread: let it finish
            await asyncio.wait({self._saving}, timeout=timeout)

    async def _in_thread(self, events: Sequence[DomainEvent]) -> int:
        """Save on a worker thread; shielded so cancelling us never abandons a save mid-way."""
        self._saving = asyncio.get_running_loop().run_in_executor(None, self.store.save, events)
        return await asyncio.shield(self._saving)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending)
                if await self._save(batch):
                    backoff = 0.05
                    continue
                await asyncio.sleep(self._retry_delay(backoff))  # outbox: retry the batch later
                backoff = min(backoff * 2, self.backoff_cap_s)
            self._idle.set()

    def _retry_delay(self, backoff: float) -> float:
        """The backoff, cut short so a durable submission fails at its deadline, not after."""
        deadlines = [s.deadline for s in self._pending if s.durable]
        if not deadlines:
            return backoff
        return max(0.0, min(backoff, min(deadlines) - asyncio.get_running_loop().time()))

    async def _save(self, batch: list[_Submission]) -> bool:
        batch = self._without_stale(batch)
        if not batch:
            return True
        events = [e for s in batch for e in s.events]
        try:
            position = await self._in_thread(events)
        except IntegrityError:
            await self._save_one_by_one(batch)
            return True
        except Exception as exc:
            self._record_failure(batch, exc)
            return False
        self._committed(batch, position)
        return True

    async def _save_one_by_one(self, batch: list[_Submission]) -> None:
        for submission in batch:
            if self._is_stale(submission):
                self._refuse(submission, IntegrityError("decided on a stream state that was refused"))
                continue
            try:
                position = await self._in_thread(submission.events)
            except IntegrityError as exc:
                streams = {e.originator_id for e in submission.events}
                for stream in streams:
                    self._stale_before[stream] = self._submitted + 1
                self.on_conflict(streams)
                self._refuse(submission, exc)
                continue
            self._committed([submission], position)

    def _is_stale(self, submission: _Submission) -> bool:
        return any(self._stale_before.get(e.originator_id, 0) > submission.seq for e in submission.events)

    def _without_stale(self, batch: list[_Submission]) -> list[_Submission]:
        """Refuse the submissions chained on a refused one; the rest are saved as usual."""
        if not self._stale_before:
            return batch
        stale = [s for s in batch if self._is_stale(s)]
        for submission in stale:
            self._refuse(submission, IntegrityError("decided on a stream state that was refused"))
        oldest = min((s.seq for s in self._pending), default=self._submitted + 1)
        self._stale_before = {k: v for k, v in self._stale_before.items() if v > oldest}  # settled chains
        refused = {id(s) for s in stale}
        return [s for s in batch if id(s) not in refused]

    def _refuse(self, submission: _Submission, exc: Exception) -> None:
        self._drop(submission)
        if not submission.done.done():
            submission.done.set_exception(exc)

    def _committed(self, batch: list[_Submission], position: int) -> None:
        self.position = max(self.position, position)
        if self.state.degraded:
            flushed = sum(len(s.events) for s in batch)
            self.state.flushed_after_failure += flushed
            self.state.incident_flushed = flushed
            self.state.degraded = False
            self._failing.clear()
            self.on_recovered(self.state)
            self.state.incident_overflowed = 0
        self._remove(batch)
        for submission in batch:
            if not submission.done.done():
                submission.done.set_result(position)
        self.on_commit(position)

    def _remove(self, batch: list[_Submission]) -> None:
        """Drop a saved batch from the pending list in one pass (not one `remove` each)."""
        saved = {id(s) for s in batch}
        kept = [s for s in self._pending if id(s) not in saved]
        self._held -= sum(len(s.events) for s in self._pending if id(s) in saved)
        self._pending = kept

    def _record_failure(self, batch: list[_Submission], exc: Exception) -> None:
        self.state.degraded = True
        self._failing.set()
        self.state.failures += 1
        self.state.last_error = f"{type(exc).__name__}: {exc}"
        unreported = [s for s in batch if not s.reported]
        for submission in unreported:
            submission.reported = True
        if unreported:
            self.on_failure([e for s in unreported for e in s.events], self.state.last_error)
        now = asyncio.get_running_loop().time()
        for submission in batch:
            if submission.durable and now >= submission.deadline:  # its caller waited long enough
                self._drop(submission)
                if not submission.done.done():
                    submission.done.set_exception(PersistFailed(self.state.last_error))

    def _drop(self, submission: _Submission) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(submission)
            self._held -= len(submission.events)

    def _trim_outbox(self) -> None:
        while self._held > self.outbox_limit and len(self._pending) > 1:
            oldest = self._pending.pop(0)
            self._held -= len(oldest.events)
            self.state.overflowed_events += len(oldest.events)
            self.state.incident_overflowed += len(oldest.events)
            if not oldest.done.done():
                oldest.done.set_exception(RuntimeError("event outbox overflowed"))
