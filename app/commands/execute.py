"""The one write path: load -> decide -> save.

Runs in progress keep their folded state in memory, so the hot path never
reads SQLite; a stream that is not live is loaded and folded first. A session
is shared by every process, so its state here is only the last one this
process knew (read, or left by its own save): a decision on it is checked by
the save itself (a newer stored version refuses it, then the stream is
reloaded), and a decision that saves nothing is confirmed on the stored state.
`execute` returns the events with the state they leave (`Executed`), so a
caller never folds the stream again to see what it just did. A run
stream normally has one writer (the request that owns it), but an operator's
permission answer appends to it too. So a stale-version conflict
(`IntegrityError`) is handled for every command: a durable command reloads
and decides again before returning; a non-durable one is re-decided in the
background the same way, so no event is silently lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError

from app.commands import (
    admit_run,
    append_content,
    ask_permission,
    cancel_run,
    decide_permission,
    drop_queued_run,
    finish_run,
    fire_run,
    follow_history,
    note_run,
    queue_run,
    record_model_call,
    record_tool_call,
    release_run,
    start_run,
)
from app.commands.base import RunCommand
from app.commands.session_base import SessionCommand
from app.errors import PersistFailed
from app.events import run as run_stream
from app.events import session as session_stream
from app.events.lease import OwnLease
from app.events.store import EventStore
from app.events.writer import EventWriter

__all__ = ["Command", "Executed", "Executor"]

log = logging.getLogger(__name__)
Command = RunCommand | fire_run.FireRun | SessionCommand  # FireRun: a dataclass (app/commands/fire_run.py)
Decider = Callable[[Any, Any], tuple[DomainEvent, ...]]
S = TypeVar("S")  # a stream's folded state


@dataclass(frozen=True, slots=True)
class _Kind(Generic[S]):
    """How to fold a kind of stream, and how this process may keep its state.

    `cache`: the state in memory is the truth (a run: one writer). Otherwise it is
    only the last known state, trusted until a save says otherwise. `keep`: whether
    a state is worth keeping (an open run; a session with a run in it).
    """

    initial: Callable[[UUID], S]
    evolve: Callable[[S, DomainEvent], S]
    cache: bool
    keep: Callable[[S], bool]


class Executed(tuple[DomainEvent, ...]):
    """What a command decided, and `state`: its stream's state after those events.

    A tuple of the events, so a caller that wants only them uses it as one.
    """

    state: Any

    def __new__(cls, events: tuple[DomainEvent, ...], state: Any) -> Executed:
        executed = super().__new__(cls, events)
        executed.state = state
        return executed


# Runs have one writer (their request) and are cached; sessions are shared by
# every process: their last known state is checked by optimistic concurrency.
_RUN: _Kind[run_stream.RunState] = _Kind(
    lambda i: run_stream.RunState(run_id=i), run_stream.evolve, cache=True, keep=lambda s: not s.finished
)
_SESSION: _Kind[session_stream.SessionState] = _Kind(
    lambda i: session_stream.SessionState(stream_id=i),
    session_stream.evolve,
    cache=False,
    keep=lambda s: bool(s.active_run or s.queue),
)

_DECIDERS: dict[type[Command], tuple[Decider, _Kind[Any]]] = {
    fire_run.FireRun: (fire_run.decide, _RUN),
    start_run.StartRun: (start_run.decide, _RUN),
    record_model_call.RecordModelCall: (record_model_call.decide, _RUN),
    record_tool_call.RecordToolCall: (record_tool_call.decide, _RUN),
    append_content.AppendContent: (append_content.decide, _RUN),
    ask_permission.AskPermission: (ask_permission.decide, _RUN),
    decide_permission.DecidePermission: (decide_permission.decide, _RUN),
    cancel_run.CancelRun: (cancel_run.decide, _RUN),
    finish_run.FinishRun: (finish_run.decide, _RUN),
    queue_run.QueueRun: (queue_run.decide, _RUN),
    note_run.MarkResumed: (note_run.decide_resumed, _RUN),
    note_run.IgnoreRequester: (note_run.decide_ignore, _RUN),
    note_run.ApplyModelOverride: (note_run.decide_override, _RUN),
    note_run.IgnoreClientTools: (note_run.decide_ignore_tools, _RUN),
    note_run.NoteDivergence: (note_run.decide_divergence, _RUN),
    admit_run.AdmitRun: (admit_run.decide, _SESSION),
    release_run.ReleaseRun: (release_run.decide, _SESSION),
    drop_queued_run.DropQueuedRun: (drop_queued_run.decide, _SESSION),
    follow_history.FollowClientHistory: (follow_history.decide, _SESSION),
}
# Each conflict means another writer's append won, so N racers for one stream need at
# most N attempts; the bound only stops a livelock. A short random pause spreads retries.
MAX_ATTEMPTS = 64
KNOWN_LIMIT = 256  # last known session states kept (each holds a transcript); beyond it, start over


def stream_of(cmd: Command) -> UUID:
    return cmd.stream_id if isinstance(cmd, SessionCommand) else cmd.run_id


class Executor:
    def __init__(self, store: EventStore, writer: EventWriter) -> None:
        self._store = store
        self._writer = writer
        writer.on_conflict = self._forget_all  # at once: nothing more is decided on a refused state
        self._live: dict[UUID, run_stream.RunState] = {}
        self._known: dict[UUID, session_stream.SessionState] = {}  # last known, not the truth
        self._conflicted: set[UUID] = set()  # streams another writer appended to under us
        # a shared store: a run's last submission, so its end can wait to know it was not overtaken
        self._shared = bool(getattr(store, "url", ""))
        # ... and the lease epoch it began in (a lapse of the lease since makes it suspect)
        self._last_submitted: dict[UUID, tuple[asyncio.Future[int], int]] = {}
        self._retries: set[asyncio.Task[Any]] = set()
        # a shared store: this instance's lease (set by its liveness); None until it holds one
        self.own_lease: OwnLease | None = None

    async def execute(self, cmd: Command, *, durable: bool = False) -> Executed:
        decide, kind = _DECIDERS[type(cmd)]
        stream_id = stream_of(cmd)
        for attempt in range(MAX_ATTEMPTS):
            # a stream being opened has no history worth reading, unless a first try conflicted
            fresh = attempt == 0 and isinstance(cmd, fire_run.FireRun)
            known = None if kind.cache else self._known.pop(stream_id, None)
            state = known if known is not None else await self._state(stream_id, kind, fresh=fresh)
            events = decide(state, cmd)
            if not events:
                if known is not None:  # nothing to save checks a known state: confirm on the stored one
                    continue
                return Executed(events, state)
            after = _fold(kind, state, events)
            self._keep(kind, after)
            done = self._writer.submit(events, durable=durable)
            if self._shared and kind.cache:
                if stream_id in self._live:
                    _, began = self._last_submitted.get(stream_id, (done, self._lease_epoch()))
                    self._last_submitted[stream_id] = (done, began)
                else:  # finished: nothing will ask
                    self._last_submitted.pop(stream_id, None)
            self._hold_until_saved(kind, after, done)
            if not durable:  # the outbox keeps them until the store takes them: the cache is right
                done.add_done_callback(partial(self._on_saved, cmd=cmd))
                return Executed(events, after)
            try:
                await done
                return Executed(events, after)
            except IntegrityError:
                self.forget(stream_id)  # stale: reload and decide again
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            except PersistFailed:
                self._unkeep(kind, stream_id, before=state, after=after)
                raise
            except BaseException:
                # not taken (outbox overflow, cancelled): the cache must not hold events the
                # store may never take; the next command reloads what is stored
                self.forget(stream_id)
                raise
        raise IntegrityError(f"stream {stream_id} kept changing under {type(cmd).__name__}")

    @property
    def store_failing(self) -> bool:
        """The writer's degraded flag: saves are failing and new events wait in its outbox."""
        return self._writer.state.degraded

    async def state_of(self, run_id: UUID) -> run_stream.RunState:
        """A run's current state, reloaded from the store (for cross-process readers)."""
        self.forget(run_id)
        return await self._state(run_id, _RUN)

    async def current(self, run_id: UUID) -> run_stream.RunState:
        """A run's state as this process knows it (cached; never drops unsaved writes)."""
        return await self._state(run_id, _RUN)

    async def session_state(self, stream_id: UUID) -> session_stream.SessionState:
        """A session's stored state (always read: other processes write it too); kept as known."""
        state = await self._state(stream_id, _SESSION)
        self._keep(_SESSION, state, always=True)
        return state

    async def events(self, stream_id: UUID, after_version: int = 0) -> list[DomainEvent]:
        """A stream's stored events after `after_version`: the one way to read a stream
        outside the projector (resume, replay, permission waits, session wake-ups).

        An event newer than a cached run state was appended by someone else (an
        operator's answer): the cache is dropped, so the next command reloads.
        """
        events = await asyncio.to_thread(self._store.stream, stream_id, after_version)
        cached = self._live.get(stream_id) or self._known.get(stream_id)
        if cached is not None and events and events[-1].originator_version > cached.version:
            self.forget(stream_id)
        return events

    def forget(self, stream_id: UUID) -> None:
        self._live.pop(stream_id, None)
        self._known.pop(stream_id, None)

    def _forget_all(self, stream_ids: set[UUID]) -> None:
        for stream_id in stream_ids:
            self.forget(stream_id)
        if len(self._conflicted) > 10_000:  # runs nobody asked about (ended on another path)
            self._conflicted.clear()
        self._conflicted |= stream_ids

    async def closed_elsewhere(self, run_id: UUID) -> bool:
        """True when another instance finished this run (its sweep, after this instance's
        lease lapsed while it was paused or cut off from the store).

        No store round trip on the hot path: another writer's append to a run shows up
        as the writer's refusal of ours (`on_conflict`), and only such a run is read
        again. The run's last append is waited for only when a sweep could have closed
        the run: this instance's lease is not surely held (`own_lease`), or lapsed since
        the run began, and the store is taking writes. While the store fails, the outbox
        keeps the events and waiting would only stall the answer; should they be refused
        later, the writer drops the whole stale chain: never a second terminal event.
        """
        last = self._last_submitted.pop(run_id, None)
        if last is not None and self._may_have_been_swept(began=last[1]):
            await self._writer.landed(last[0], timeout=self._writer.unavailable_wait_s)
        if run_id not in self._conflicted:
            return False
        self._conflicted.discard(run_id)
        return (await self.state_of(run_id)).finished

    def _may_have_been_swept(self, began: int) -> bool:
        """Only on a shared store, and only if this instance's lease may have expired since
        the run began (it is not surely held now, or it lapsed in between: a pause)."""
        if not self._shared:
            return False
        lease = self.own_lease
        return lease is None or not lease.surely_held() or lease.epoch != began

    def _lease_epoch(self) -> int:
        return self.own_lease.epoch if self.own_lease is not None else -1

    def live_runs(self) -> list[run_stream.RunState]:
        return list(self._live.values())

    def _on_saved(self, done: asyncio.Future[int], cmd: Command) -> None:
        if done.cancelled() or not isinstance(done.exception(), IntegrityError):
            return
        self.forget(stream_of(cmd))
        task = asyncio.get_running_loop().create_task(self._redo(cmd))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _redo(self, cmd: Command) -> None:
        try:
            await self.execute(cmd, durable=True)
        except Exception:  # logged; the writer's degraded flag covers store failures
            log.exception("re-deciding %s after a conflict failed", type(cmd).__name__)

    async def _state(self, stream_id: UUID, kind: _Kind[S], *, fresh: bool = False) -> S:
        cached = self._live.get(stream_id) if kind.cache else None
        if cached is not None:  # only run states are cached (`_RUN.cache`)
            return cast(S, cached)
        if fresh:  # a stream being opened has no history worth reading
            return kind.initial(stream_id)
        events = await asyncio.to_thread(self._store.stream, stream_id)
        state = kind.initial(stream_id)
        for event in events:
            state = kind.evolve(state, event)
        return state

    def _unkeep(self, kind: _Kind[S], stream_id: UUID, *, before: S, after: S) -> None:
        """Undo a refused durable save in the cache: back to the state before it.

        The writer dropped exactly that submission; the stream's earlier events that still
        wait in the outbox are in `before`. Forgetting instead would make the next command
        reload the store, which lacks them: it would decide on a state missing events that
        are yet to be saved (a `Queued` decided as a no-op, a `Fired` decided twice and
        refused with every later event of the run). Only when nothing else was decided on
        the stream since (else its state is unknown: reload).
        """
        cached = self._live.get(stream_id)
        if kind.cache and (cached is after or (cached is None and not kind.keep(after))):
            self._keep(kind, before)
        else:
            self.forget(stream_id)

    def _hold_until_saved(self, kind: _Kind[S], state: S, saving: asyncio.Future[int]) -> None:
        """A run that just ended stays cached until its last events are saved.

        An ended run is not kept (nothing more is decided on it), but a command another path
        of this process decides on it meanwhile (a late `QueueRun` of the admission that
        queued it) would otherwise reload a store that lacks the events still waiting to be
        saved, decide them again and conflict with its own process's writes.
        """
        if not kind.cache or kind.keep(state) or saving.done():
            return
        stream_id = _stream_id(state)
        self._live[stream_id] = cast(run_stream.RunState, state)
        saving.add_done_callback(partial(self._release_held, stream_id, state))

    def _release_held(self, stream_id: UUID, state: Any, _saving: asyncio.Future[int]) -> None:
        if self._live.get(stream_id) is state:  # nothing newer was decided or reloaded since
            del self._live[stream_id]

    def _keep(self, kind: _Kind[S], state: S, *, always: bool = False) -> None:
        """Keep a state this process now knows: a run's as the truth, a session's as last known."""
        stream_id = _stream_id(state)
        if not (always or kind.keep(state)):
            self.forget(stream_id)
        elif kind.cache:
            self._live[stream_id] = cast(run_stream.RunState, state)
        else:
            if len(self._known) >= KNOWN_LIMIT:
                self._known.clear()
            self._known[stream_id] = cast(session_stream.SessionState, state)


def _fold(kind: _Kind[S], state: S, events: tuple[DomainEvent, ...]) -> S:
    for event in events:
        state = kind.evolve(state, event)
    return state


def _stream_id(state: Any) -> UUID:
    stream_id: UUID = state.run_id if isinstance(state, run_stream.RunState) else state.stream_id
    return stream_id
