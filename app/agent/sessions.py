"""Sessions: admission (one run at a time), the FIFO queue, release, deferred runs.

The session stream decides; this module is the shell around it. A request
that finds its session free runs at once. One that finds it busy becomes a
deferred run and the request is answered 409. Admission and queueing are one
decision saved in one event (`RunQueued` carries the turn, the options and
the fired fields), so a release that activates the run a moment later can
always start it; the run's own stream (`Fired`, `Queued`) is written after,
for resume and the ledger, and written again by whoever starts it if it is
missing. When the active run ends, the process that ran it releases the
session; if that activates a queued run, the same process starts it in the
background. Its output is reached by resume. Every path that cannot start an
activated run releases the session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from app.agent import router
from app.agent.lifecycle import RequestLifecycle, RouteDefaults
from app.agent.loop import Done
from app.agent.transcript import FollowedHistory, follow_client, message_from_dict, options_from_dict
from app.agent.turns import TurnResult, TurnRunner
from app.commands.admit_run import AdmitRun
from app.commands.append_content import AppendContent
from app.commands.execute import Executor
from app.commands.finish_run import FinishRun
from app.commands.fire_run import FireRun
from app.commands.follow_history import FollowClientHistory
from app.commands.note_run import NoteDivergence
from app.commands.queue_run import QueueRun
from app.commands.release_run import ReleaseRun
from app.errors import BmoError, Interrupted, PersistFailed
from app.events.run import FIRED_FIELDS, Fired, Queued, fired_fields
from app.events.session import RunActivated, RunQueued, SessionState, session_uuid
from app.providers.catalog import ModelCatalog
from app.telemetry import Records

__all__ = ["Admission", "SessionService"]

log = logging.getLogger(__name__)
# a queued run's fired record: requester and task travel beside it
QUEUED_FIRED = tuple(name for name in FIRED_FIELDS if name not in ("requester", "task"))


@dataclass(frozen=True, slots=True)
class Admission:
    active: bool
    run_id: str  # the request's own run when active, else the deferred run
    position: int = 0
    transcript: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class QueuedWork:
    """What a deferred run needs to start, as saved with its queueing."""

    session_id: str
    fired: dict[str, Any]
    requester: str
    by_request: str
    messages: list[dict[str, Any]]
    earlier: list[dict[str, Any]]
    options: dict[str, Any]
    position: int = 0


class SessionService:
    def __init__(
        self,
        *,
        executor: Executor,
        turns: TurnRunner,
        catalog: ModelCatalog,
        records: Records,
        defaults: RouteDefaults,
        max_queue_depth: int,
        release_retry_s: float = 1.0,
    ) -> None:
        """`release_retry_s`: how often a release the failing store refused is retried."""
        self._executor = executor
        self._turns = turns
        self._catalog = catalog
        self._records = records
        self._defaults = defaults
        self._max_queue_depth = max_queue_depth
        self._release_retry_s = release_retry_s
        self._background: set[asyncio.Task[None]] = set()

    async def state(self, session_id: str) -> SessionState:
        return await self._executor.session_state(session_uuid(session_id))

    async def admit(
        self,
        lifecycle: RequestLifecycle,
        model: str,
        messages: list[dict[str, Any]],
        earlier: list[dict[str, Any]],
        options: dict[str, Any],
    ) -> Admission:
        """Run now, or queue (one save with everything the queued run needs).

        Raises SessionQueueFull when the queue is at max_queue_depth, PersistFailed
        when the store cannot record the decision (then nothing was admitted).
        """
        session_id = lifecycle.session_id
        queued_id = uuid4().hex
        fired = lifecycle.fired_record(model=lifecycle.model, stream=bool(options.get("stream", True)))
        events = await self._executor.execute(
            AdmitRun(
                stream_id=session_uuid(session_id),
                at=datetime.now(UTC),
                session_id=session_id,
                run_id=lifecycle.request_id,
                queued_run_id=queued_id,
                model=model,
                requester=lifecycle.requester,
                max_queue_depth=self._max_queue_depth,
                by_request=lifecycle.request_id,
                messages=messages,
                earlier=earlier,
                options=options,
                fired=fired,
            ),
            durable=True,
        )
        if any(isinstance(e, RunActivated) and e.run_id == lifecycle.request_id for e in events):
            state: SessionState = events.state  # as the admission left it: no second read
            return Admission(True, lifecycle.request_id, transcript=state.transcript)
        queued = next(e for e in events if isinstance(e, RunQueued))
        self._records.fired(request_id=queued_id, queued_by=lifecycle.request_id, **fired)
        await self._open_queued_stream(queued_id, self._work(session_id, queued), durable=True)
        return Admission(False, queued_id, position=queued.position)

    @staticmethod
    def _work(session_id: str, event: RunQueued) -> QueuedWork:
        return QueuedWork(
            session_id=session_id,
            fired=dict(event.fired or {}),
            requester=event.requester,
            by_request=event.by_request,
            messages=list(event.messages or ()),
            earlier=list(event.earlier or ()),
            options=dict(event.options or {}),
            position=event.position,
        )

    async def _open_queued_stream(
        self, run_id: str, work: QueuedWork, *, durable: bool, fired: bool = False
    ) -> None:
        """The deferred run's own stream (`Fired`, `Queued`): for resume and the ledger.

        Idempotent (both decides are no-ops once written). When the store fails, the
        events wait in the writer's outbox: the queueing itself is already saved.
        `fired`: the stored stream already opens with `Fired`. Then no FireRun: the
        executor decides a FireRun it has no cached state for on an empty stream (a
        stream being opened has no history), which would be a second `Fired`, refused
        with every later event of the run (its `Queued`, its `Finished`).
        """
        run = UUID(hex=run_id)
        now = datetime.now(UTC)
        fire = () if fired else (FireRun(run_id=run, at=now, requester=work.requester, **work.fired),)
        commands = (
            *fire,
            QueueRun(
                run_id=run,
                at=now,
                session_id=work.session_id,
                position=work.position,
                by_request=work.by_request,
                messages=work.messages,
                options=work.options,
            ),
        )
        for command in commands:
            try:
                await self._executor.execute(command, durable=durable)
            except PersistFailed:
                await self._executor.execute(command)  # kept in the outbox until the store recovers

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

    async def _release_later(self, command: ReleaseRun, for_s: float = 3600.0) -> None:
        """Retry a release until the store takes it again (bounded; the startup sweep is the backstop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + for_s
        while loop.time() < deadline:
            await asyncio.sleep(self._release_retry_s)
            try:
                events = await self._executor.execute(command, durable=True)
            except PersistFailed:
                continue
            self._activated(events)
            return

    def _activated(self, events: tuple) -> None:
        for event in events:
            if isinstance(event, RunActivated):
                self._keep(self._run_deferred(event.originator_id, event.run_id))

    async def follow(self, lifecycle: RequestLifecycle, followed: FollowedHistory, new_turn: Any) -> None:
        """Record that the run answers the client's diverged history, and make the session follow it."""
        diverged = followed.diverged
        if diverged is None:
            return
        now = datetime.now(UTC)
        await self._executor.execute(
            NoteDivergence(
                run_id=lifecycle.run_id,
                at=now,
                kept=diverged.kept,
                dropped=diverged.dropped,
                client_messages=diverged.client_messages,
            )
        )
        try:
            await self._executor.execute(
                FollowClientHistory(
                    stream_id=session_uuid(lifecycle.session_id),
                    at=now,
                    run_id=lifecycle.request_id,
                    kept=diverged.kept,
                    dropped=diverged.dropped,
                    messages=followed.base(new_turn),
                ),
                durable=True,
            )
        except PersistFailed:  # the run still answers the client's history; the next turn re-diverges
            log.warning("could not record the divergence of session %s", lifecycle.session_id)

    async def aclose(self, drain_s: float = 0.0) -> None:
        """Let deferred runs finish for up to `drain_s`, then end the rest (reason `interrupted`)."""
        if self._background and drain_s > 0:
            await asyncio.wait(list(self._background), timeout=drain_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _keep(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _queued_work(self, stream_id: UUID, run_id: str) -> QueuedWork | None:
        """From the session's `RunQueued` (one save with the queueing); else the run's own stream."""
        events = await self._executor.events(stream_id)
        queued = next((e for e in events if isinstance(e, RunQueued) and e.run_id == run_id), None)
        if queued is not None and queued.fired:
            return self._work(str(queued.fired.get("session_id", "")), queued)
        run_events = await self._executor.events(UUID(hex=run_id))  # older streams
        fired = next((e for e in run_events if isinstance(e, Fired)), None)
        legacy = next((e for e in run_events if isinstance(e, Queued)), None)
        if fired is None or legacy is None:
            return None
        fields = fired_fields(fired, QUEUED_FIRED)
        return QueuedWork(
            fired.session_id,
            fields,
            fired.requester,
            legacy.by_request,
            legacy.messages,
            [],
            legacy.options,
            legacy.position,
        )

    async def _run_deferred(self, stream_id: UUID, run_id: str) -> None:
        try:
            work = await self._queued_work(stream_id, run_id)
            opened = await self._executor.events(UUID(hex=run_id)) if work is not None else []
            if work is not None and not any(isinstance(e, Queued) for e in opened):
                fired = any(isinstance(e, Fired) for e in opened)
                await self._open_queued_stream(run_id, work, durable=False, fired=fired)
        except Exception:
            log.exception("deferred run %s could not be prepared", run_id)
            work = None
        if work is None:  # nothing to start: never leave the session busy with it
            log.error("deferred run %s has nothing to start; releasing its session", run_id)
            await self._release_stream(stream_id, run_id)
            return
        lifecycle = self._lifecycle(run_id, work)
        new_turn = [message_from_dict(m) for m in work.messages]
        result = TurnResult()

        async def release(outcome: str) -> None:
            await self.release(work.session_id, run_id, outcome, [*work.messages, result.answer()])

        lifecycle.on_finish.append(release)
        await self._drive(lifecycle, work, new_turn, result)

    async def _release_stream(self, stream_id: UUID, run_id: str) -> None:
        """End a run that cannot start (if its stream exists) and free its session."""
        now = datetime.now(UTC)
        error = "the queued run could not be started"
        await self._executor.execute(
            FinishRun(
                run_id=UUID(hex=run_id),
                at=now,
                outcome="error_500",
                status_code=500,
                elapsed_ms=0.0,
                error=error,
            )
        )
        command = ReleaseRun(stream_id=stream_id, at=now, run_id=run_id, outcome="error_500", turn=[])
        try:
            events = await self._executor.execute(command, durable=True)
        except PersistFailed:
            self._keep(self._release_later(command))
            return
        self._activated(events)

    async def _drive(
        self, lifecycle: RequestLifecycle, work: QueuedWork, new_turn: list, result: TurnResult
    ) -> None:
        try:
            options = options_from_dict(work.options)
            if options.mode == "clarify":  # an ambiguous request that had to wait its turn
                text = router.clarification(new_turn)
                await self._executor.execute(
                    AppendContent(run_id=lifecycle.run_id, at=datetime.now(UTC), text=text)
                )
                result.texts.append(text)
                await lifecycle.finish("clarification", 200, finish_reason="stop")
                return
            model = self._catalog.resolve(lifecycle.model)
            if model is None:
                await lifecycle.finish(
                    "error_500", 500, error=f"model '{lifecycle.model}' is no longer configured"
                )
                return
            state = await self.state(work.session_id)
            earlier = [message_from_dict(m) for m in work.earlier]
            full = bool(work.options.get("full_history"))
            followed = follow_client(state.transcript, earlier, new_turn, full_history=full)
            await self.follow(lifecycle, followed, new_turn)
            done: Done | None = None
            async for event in self._turns.run(lifecycle.run_id, model, followed.messages, options, result):
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

    def _lifecycle(self, run_id: str, work: QueuedWork) -> RequestLifecycle:
        lifecycle = RequestLifecycle(
            request_id=run_id,
            route=str(work.fired.get("route", "chat_completions")),
            session_id=work.session_id,
            client_ua=str(work.fired.get("client_ua", "")),
            defaults=self._defaults,
            executor=self._executor,
            records=self._records,
            requester=work.requester,
        )
        lifecycle.fired = True  # fired when it was queued
        lifecycle.model = str(work.fired.get("model", ""))
        return lifecycle
