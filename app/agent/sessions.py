"""Sessions: admission (one run at a time), the FIFO queue, release, deferred runs.

The session stream decides; this module is the shell around it. A request
that finds its session free runs at once. One that finds it busy becomes a
deferred run with its own stream (its turn and options stored in `Queued`)
and the request is answered 409. When the active run ends, the process that
ran it releases the session; if that activates a queued run, the same
process starts it in the background. Its output is reached by resume.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from app.agent.lifecycle import RequestLifecycle, RouteDefaults
from app.agent.loop import Done
from app.agent.transcript import history_for, message_from_dict, options_from_dict
from app.agent.turns import TurnResult, TurnRunner
from app.commands.admit_run import AdmitRun
from app.commands.drop_queued_run import DropQueuedRun
from app.commands.execute import Executor
from app.commands.fire_run import FireRun
from app.commands.queue_run import QueueRun
from app.commands.release_run import ReleaseRun
from app.errors import BmoError, Interrupted
from app.events.run import Fired, Queued
from app.events.session import RunActivated, RunQueued, SessionState, session_uuid
from app.events.store import EventStore
from app.events.writer import PersistFailed
from app.providers.catalog import ModelCatalog
from app.telemetry import Records

__all__ = ["Admission", "SessionService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admission:
    active: bool
    run_id: str  # the request's own run when active, else the deferred run
    position: int = 0
    transcript: tuple[dict[str, Any], ...] = ()


class SessionService:
    def __init__(
        self,
        *,
        executor: Executor,
        store: EventStore,
        turns: TurnRunner,
        catalog: ModelCatalog,
        records: Records,
        defaults: RouteDefaults,
        max_queue_depth: int,
    ) -> None:
        self._executor = executor
        self._store = store
        self._turns = turns
        self._catalog = catalog
        self._records = records
        self._defaults = defaults
        self._max_queue_depth = max_queue_depth
        self._background: set[asyncio.Task[None]] = set()

    async def state(self, session_id: str) -> SessionState:
        return await self._executor.session_state(session_uuid(session_id))

    async def admit(self, session_id: str, run_id: str, model: str, requester: str) -> Admission:
        """Raises SessionQueueFull when the queue is at max_queue_depth."""
        queued_id = uuid4().hex
        events = await self._executor.execute(
            AdmitRun(
                stream_id=session_uuid(session_id),
                at=datetime.now(UTC),
                session_id=session_id,
                run_id=run_id,
                queued_run_id=queued_id,
                model=model,
                requester=requester,
                max_queue_depth=self._max_queue_depth,
            ),
            durable=True,
        )
        if any(isinstance(e, RunActivated) and e.run_id == run_id for e in events):
            state = await self.state(session_id)
            return Admission(True, run_id, transcript=state.transcript)
        position = next(e.position for e in events if isinstance(e, RunQueued))
        return Admission(False, queued_id, position=position)

    async def defer(
        self, lifecycle: RequestLifecycle, admission: Admission, messages: list[dict], options: dict
    ) -> None:
        """Open the deferred run's stream with everything it needs to start later."""
        run_id = UUID(hex=admission.run_id)
        now = datetime.now(UTC)
        fired = {
            "session_id": lifecycle.session_id,
            "route": lifecycle.route,
            "model": lifecycle.model,
            "stream": bool(options.get("stream", True)),
            "tool_policy": self._defaults.tool_policy,
            "ambiguity_action": self._defaults.ambiguity_action,
            "is_session_reuse": True,
            "client_ua": lifecycle.client_ua[:64],
        }
        self._records.fired(request_id=admission.run_id, queued_by=lifecycle.request_id, **fired)
        await self._executor.execute(
            FireRun(run_id=run_id, at=now, requester=lifecycle.requester, **fired), durable=True
        )
        await self._executor.execute(
            QueueRun(
                run_id=run_id,
                at=now,
                session_id=lifecycle.session_id,
                position=admission.position,
                by_request=lifecycle.request_id,
                messages=messages,
                options=options,
            ),
            durable=True,
        )

    async def release(self, session_id: str, run_id: str, outcome: str, turn: list[dict]) -> None:
        command = ReleaseRun(
            stream_id=session_uuid(session_id),
            at=datetime.now(UTC),
            run_id=run_id,
            outcome=outcome,
            turn=turn,
        )
        try:
            events = await self._executor.execute(command, durable=True)
        except PersistFailed:  # a release must happen, or the session stays busy forever
            self._keep(self._release_later(command))
            return
        self._activated(events)

    async def _release_later(self, command: ReleaseRun, every_s: float = 1.0, for_s: float = 3600.0) -> None:
        """Retry a release until the store takes it again (bounded; the startup sweep is the backstop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + for_s
        while loop.time() < deadline:
            await asyncio.sleep(every_s)
            try:
                events = await self._executor.execute(command, durable=True)
            except PersistFailed:
                continue
            self._activated(events)
            return

    def _activated(self, events: tuple) -> None:
        for event in events:
            if isinstance(event, RunActivated):
                self._start(event.run_id)

    async def drop(self, session_id: str, run_id: str, reason: str) -> None:
        await self._executor.execute(
            DropQueuedRun(
                stream_id=session_uuid(session_id), at=datetime.now(UTC), run_id=run_id, reason=reason
            ),
            durable=True,
        )

    async def aclose(self, drain_s: float = 0.0) -> None:
        """Let deferred runs finish for up to `drain_s`, then end the rest (reason `interrupted`)."""
        if self._background and drain_s > 0:
            await asyncio.wait(list(self._background), timeout=drain_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _start(self, run_id: str) -> None:
        self._keep(self._run_deferred(run_id))

    def _keep(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_deferred(self, run_id: str) -> None:
        events = await asyncio.to_thread(self._store.stream, UUID(hex=run_id))
        fired = next((e for e in events if isinstance(e, Fired)), None)
        queued = next((e for e in events if isinstance(e, Queued)), None)
        if fired is None or queued is None:
            log.error("deferred run %s has no Fired/Queued events", run_id)
            return
        lifecycle = self._lifecycle(run_id, fired)
        new_turn = [message_from_dict(m) for m in queued.messages]
        result = TurnResult()

        async def release(outcome: str) -> None:
            await self.release(fired.session_id, run_id, outcome, [*queued.messages, result.answer()])

        lifecycle.on_finish.append(release)
        await self._drive(lifecycle, fired, new_turn, queued.options, result)

    async def _drive(
        self, lifecycle: RequestLifecycle, fired: Fired, new_turn: list, options: dict, result: TurnResult
    ) -> None:
        model = self._catalog.resolve(fired.model)
        if model is None:
            await lifecycle.finish("error_500", 500, error=f"model '{fired.model}' is no longer configured")
            return
        state = await self.state(fired.session_id)
        history = history_for(state.transcript, (), new_turn)
        try:
            done: Done | None = None
            async for event in self._turns.run(
                lifecycle.run_id, model, history, options_from_dict(options), result
            ):
                if isinstance(event, Done):
                    done = event
            outcome = done.outcome if done else "error_500"
            await lifecycle.finish(outcome, 200, finish_reason=done.finish_reason if done else "")
        except asyncio.CancelledError:  # only the server's shutdown cancels a deferred run
            lifecycle.finish_later("error_500", 500, error=Interrupted.REASON)
            raise
        except Exception as exc:  # a deferred run has no client to tell: record it
            error = exc if isinstance(exc, BmoError) else None
            message = error.message if error else f"{type(exc).__name__}: {exc}"
            await lifecycle.finish("error_500", error.status if error else 500, error=message)

    def _lifecycle(self, run_id: str, fired: Fired) -> RequestLifecycle:
        lifecycle = RequestLifecycle(
            request_id=run_id,
            route=fired.route,
            session_id=fired.session_id,
            client_ua=fired.client_ua,
            defaults=self._defaults,
            executor=self._executor,
            records=self._records,
            requester=fired.requester,
        )
        lifecycle.fired = True  # fired when it was queued
        lifecycle.model = fired.model
        return lifecycle
