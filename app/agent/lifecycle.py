"""One request's (or deferred run's) life: exactly one fired, exactly one terminal.

The ASGI shell creates it for each request; the chat handler fires it once
the body names a model, everyone else fires at entry. A queued run gets one
when it starts. Whoever finishes first decides the outcome; later finishes
are no-ops (the `decide` of FinishRun agrees). `on_finish` hooks run after
the terminal event (a session releases its run there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from app.agent.drain import Drain
from app.commands import CancelRun, FinishRun, FireRun
from app.commands.execute import Executor
from app.commands.note_run import IgnoreRequester
from app.errors import BmoError, PersistFailed
from app.outcomes import Outcome
from app.telemetry import Records

__all__ = ["RequestLifecycle", "RouteDefaults"]

log = logging.getLogger(__name__)
UA_LIMIT = 64  # bytes, per SPEC §11


@dataclass(frozen=True, slots=True)
class RouteDefaults:
    """The resolved policy values every fired record carries."""

    tool_policy: str
    ambiguity_action: str
    default_model: str


@dataclass(slots=True)
class RequestLifecycle:
    request_id: str
    route: str
    session_id: str
    client_ua: str
    defaults: RouteDefaults
    executor: Executor
    records: Records
    started: float = field(default_factory=time.perf_counter)
    fired: bool = False
    finished: bool = False
    error: str = ""
    model: str = ""
    closing: asyncio.Task[None] | None = None
    closing_hooks: asyncio.Task[None] | None = None
    requester: str = ""
    peer: str = ""
    ignored_identity: tuple[str, ...] = ()  # identity headers from an untrusted peer
    forced_outcome: Outcome | None = None  # set by an error that names its outcome
    on_finish: list[Callable[[Outcome], Awaitable[None]]] = field(default_factory=list)
    drain: Drain | None = None  # the serving process's shutdown: a run in flight ends at its deadline

    @property
    def run_id(self) -> UUID:
        return UUID(hex=self.request_id)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def note_error(self, error: BmoError) -> None:
        self.error = error.ledger_error
        if error.outcome:
            self.forced_outcome = error.outcome

    async def fire(self, *, model: str = "", stream: bool = False, task: str = "") -> None:
        if self.fired:
            return
        self.fired = True
        self.model = model
        fields = self.fired_record(model=model, stream=stream)
        self.records.fired(request_id=self.request_id, **fields)
        await self.executor.execute(
            FireRun(run_id=self.run_id, at=datetime.now(UTC), requester=self.requester, task=task, **fields)
        )
        if self.ignored_identity:  # visible in the run's events, never silently dropped
            await self.executor.execute(
                IgnoreRequester(
                    run_id=self.run_id,
                    at=datetime.now(UTC),
                    peer=self.peer,
                    headers=list(self.ignored_identity),
                )
            )

    def fired_record(self, *, model: str, stream: bool) -> dict[str, Any]:
        """The one builder of a fired record: this request's context, as FireRun and the
        `openai_compat.fired` record carry it (a queued run's is built here too)."""
        return {
            "session_id": self.session_id,
            "route": self.route,
            "tool_policy": self.defaults.tool_policy,
            "ambiguity_action": self.defaults.ambiguity_action,
            "model": model,
            "stream": stream,
            "is_session_reuse": bool(self.session_id),
            "client_ua": truncate_utf8(self.client_ua, UA_LIMIT),
        }

    def note(self, outcome: str, **extra: object) -> None:
        """A non-terminal action record (e.g. model_override_applied)."""
        self.records.action(
            outcome=outcome,
            terminal=False,
            request_id=self.request_id,
            session_id=self.session_id,
            route=self.route,
            **extra,
        )

    def finish_later(
        self, outcome: Outcome, status_code: int, *, error: str = "", by: str = "client"
    ) -> None:
        """Finish from a context that must not await (a cancelled task)."""
        if self.finished or self.closing is not None:
            return
        self.closing = asyncio.get_running_loop().create_task(
            self.finish(outcome, status_code, error=error, by=by)
        )

    async def settled(self) -> None:
        """Wait for a `finish_later` in flight."""
        if self.closing is not None:
            await asyncio.gather(self.closing, return_exceptions=True)

    async def finish(
        self,
        outcome: Outcome,
        status_code: int,
        *,
        error: str = "",
        finish_reason: str = "",
        by: str = "client",
    ) -> None:
        """The terminal event; a cancellation first records who cancelled (`by`) and why."""
        if self.finished:
            return
        if not self.fired:
            await self.fire()
        self.finished = True
        if self.forced_outcome and outcome in ("invalid_request", "error_500", "final_answer"):
            outcome = self.forced_outcome
        elapsed = round(self.elapsed_ms(), 3)
        error = error or self.error
        fields: dict[str, object] = {
            "request_id": self.request_id,
            "session_id": self.session_id,
            "route": self.route,
            "status_code": status_code,
            "elapsed_ms": elapsed,
        }
        if error:
            fields["error"] = error
        self.records.action(outcome=outcome, terminal=True, **fields)
        if outcome == "cancelled":
            await self.executor.execute(
                CancelRun(run_id=self.run_id, at=datetime.now(UTC), reason=error or "cancelled", by=by)
            )
        finish = FinishRun(
            run_id=self.run_id,
            at=datetime.now(UTC),
            outcome=outcome,
            status_code=status_code,
            elapsed_ms=elapsed,
            error=error,
            finish_reason=finish_reason,
        )
        if not self.on_finish:
            await self.executor.execute(finish)
            return
        # Shielded: a cancelled request (client gone) must still end its run and release its session.
        self.closing_hooks = asyncio.get_running_loop().create_task(self._end_then_hooks(finish, outcome))
        await asyncio.shield(self.closing_hooks)

    async def _end_then_hooks(self, finish: FinishRun, outcome: Outcome) -> None:
        """Save the terminal event, then run the hooks: a saved release implies a saved `Finished`.

        Durable, so a stale-version conflict is re-decided here rather than in the
        background after the session was released (a run released without its
        `Finished`, or with its events re-decided out of order). While the store is
        failing it joins the outbox instead, ahead of the release that follows it.
        """
        try:
            await self.executor.execute(finish, durable=not self.executor.store_failing)
        except PersistFailed:  # the store failed meanwhile: the outbox keeps it, ahead of the release
            await self.executor.execute(finish)
        except Exception:  # never leave a session busy because its run's end was not recorded
            log.exception("run %s: the terminal event could not be recorded", self.request_id)
        for hook in self.on_finish:
            await hook(outcome)


def truncate_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")
