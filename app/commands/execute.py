"""The one write path: load -> decide -> save.

Runs in progress keep their folded state in memory, so the hot path never
reads SQLite; a stream that is not live is loaded and folded first. A run
stream normally has one writer (the request that owns it), but an operator's
permission answer appends to it too. So a stale-version conflict
(`IntegrityError`) is handled for every command: a durable command reloads
and decides again before returning; a non-durable one is re-decided in the
background the same way, so no event is silently lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError

from app.commands import (
    append_content,
    ask_permission,
    cancel_run,
    decide_permission,
    finish_run,
    fire_run,
    record_model_call,
    record_tool_call,
    start_run,
)
from app.commands.base import RunCommand
from app.events.run import RunState, evolve, fold
from app.events.store import EventStore
from app.events.writer import EventWriter

__all__ = ["Executor"]

log = logging.getLogger(__name__)
Decider = Callable[[RunState, Any], tuple[DomainEvent, ...]]

_DECIDERS: dict[type[RunCommand], Decider] = {
    fire_run.FireRun: fire_run.decide,
    start_run.StartRun: start_run.decide,
    record_model_call.RecordModelCall: record_model_call.decide,
    record_tool_call.RecordToolCall: record_tool_call.decide,
    append_content.AppendContent: append_content.decide,
    ask_permission.AskPermission: ask_permission.decide,
    decide_permission.DecidePermission: decide_permission.decide,
    cancel_run.CancelRun: cancel_run.decide,
    finish_run.FinishRun: finish_run.decide,
}
MAX_ATTEMPTS = 5


class Executor:
    def __init__(self, store: EventStore, writer: EventWriter) -> None:
        self._store = store
        self._writer = writer
        self._live: dict[UUID, RunState] = {}
        self._retries: set[asyncio.Task[Any]] = set()

    async def execute(self, cmd: RunCommand, *, durable: bool = False) -> tuple[DomainEvent, ...]:
        for _attempt in range(MAX_ATTEMPTS):
            state = await self._state(cmd)
            events = _DECIDERS[type(cmd)](state, cmd)
            if not events:
                return events
            self._remember(state, events)
            done = self._writer.submit(events)
            if not durable:
                done.add_done_callback(lambda f, c=cmd: self._on_saved(f, c))
                return events
            try:
                await done
                return events
            except IntegrityError:
                self.forget(cmd.run_id)  # stale: reload and decide again
        raise IntegrityError(f"stream {cmd.run_id} kept changing under {type(cmd).__name__}")

    async def state_of(self, run_id: UUID) -> RunState:
        """The current state, reloaded from the store (for cross-process readers)."""
        self.forget(run_id)
        events = await asyncio.to_thread(self._store.stream, run_id)
        return fold(run_id, events)

    def forget(self, run_id: UUID) -> None:
        self._live.pop(run_id, None)

    def live_runs(self) -> list[RunState]:
        return list(self._live.values())

    def _on_saved(self, done: asyncio.Future[int], cmd: RunCommand) -> None:
        if done.cancelled() or not isinstance(done.exception(), IntegrityError):
            return
        self.forget(cmd.run_id)
        task = asyncio.get_running_loop().create_task(self._redo(cmd))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _redo(self, cmd: RunCommand) -> None:
        try:
            await self.execute(cmd, durable=True)
        except Exception:  # logged; the writer's degraded flag covers store failures
            log.exception("re-deciding %s after a conflict failed", type(cmd).__name__)

    async def _state(self, cmd: RunCommand) -> RunState:
        state = self._live.get(cmd.run_id)
        if state is not None:
            return state
        if isinstance(cmd, fire_run.FireRun):
            return RunState(run_id=cmd.run_id)
        events = await asyncio.to_thread(self._store.stream, cmd.run_id)
        return fold(cmd.run_id, events)

    def _remember(self, state: RunState, events: tuple[DomainEvent, ...]) -> None:
        for event in events:
            state = evolve(state, event)
        if state.finished:
            self._live.pop(state.run_id, None)
        else:
            self._live[state.run_id] = state
