"""The one write path: load -> decide -> save.

Runs in progress keep their folded state in memory (a run stream has one
writer: the request that owns it), so the hot path never reads SQLite. A
stream that is not live is loaded from the store first. `durable=True`
waits for the commit and, on a stale-version conflict, reloads and decides
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError

from app.commands import (
    append_content,
    cancel_run,
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

Decider = Callable[[RunState, Any], tuple[DomainEvent, ...]]

_DECIDERS: dict[type[RunCommand], Decider] = {
    fire_run.FireRun: fire_run.decide,
    start_run.StartRun: start_run.decide,
    record_model_call.RecordModelCall: record_model_call.decide,
    record_tool_call.RecordToolCall: record_tool_call.decide,
    append_content.AppendContent: append_content.decide,
    cancel_run.CancelRun: cancel_run.decide,
    finish_run.FinishRun: finish_run.decide,
}


class Executor:
    def __init__(self, store: EventStore, writer: EventWriter) -> None:
        self._store = store
        self._writer = writer
        self._live: dict[UUID, RunState] = {}

    async def execute(self, cmd: RunCommand, *, durable: bool = False) -> tuple[DomainEvent, ...]:
        for attempt in range(3):
            state = await self._state(cmd)
            events = _DECIDERS[type(cmd)](state, cmd)
            if not events:
                return events
            self._remember(state, events)
            done = self._writer.submit(events)
            if not durable:
                return events
            try:
                await done
                return events
            except IntegrityError:
                self._live.pop(cmd.run_id, None)  # stale: reload and decide again
                if attempt == 2:
                    raise
        return ()

    def live_runs(self) -> list[RunState]:
        return list(self._live.values())

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
