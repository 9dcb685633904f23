"""Liveness on a shared store: leases, and closing the runs of instances that are gone.

Each `bmo serve` instance on PostgreSQL holds a lease in the store and renews
it every quarter lease. A run belongs to the instance that fired or started it
(recorded with its events). Every instance sweeps now and then: the open runs
of instances whose lease has expired end as `error_500` / `interrupted` through
the ordinary commands, and their sessions are released (which starts the next
queued run here) or their queue places dropped. A live instance's runs are never
touched, and an instance never sweeps its own. A sweeper that was itself cut
off from the store first renews its lease for a whole lease period before it
sweeps again: every instance the same outage cut off gets that long to renew its
lease (and flush its outbox), so an outage of the store is never taken for the
death of its instances. An instance that was only paused finds its runs finished when it
resumes: its own late appends conflict with the terminal event and are dropped
by the ordinary decide path, so no run gets a second terminal event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from app.agent.sessions import SessionService
from app.commands.execute import Executor
from app.events.lease import OwnLease
from app.recovery import REASON, close_run, drop_queued
from app.telemetry import Records

__all__ = ["REASON", "Liveness"]

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    """The two lease operations liveness needs from the shared store (PostgreSQL's
    `PostgresEventStore` has them); liveness never reads or writes events itself."""

    def hold_lease(self, addr: str, lease_s: float) -> None: ...

    def abandoned_runs(self) -> list[str]: ...


@dataclass
class Liveness:
    store: LeaseStore
    executor: Executor
    sessions: SessionService
    records: Records
    addr: str
    lease_s: float
    last_error: str | None = None
    lease: OwnLease = field(init=False)
    _connected_since: float | None = field(default=None, repr=False)  # renewing without a break since
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.lease = OwnLease(self.lease_s)
        self.executor.own_lease = self.lease  # answers need no store round trip while it is held

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="liveness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        period = self.lease_s / 4
        while True:
            try:
                asked = self.lease.asked()
                await asyncio.to_thread(self.store.hold_lease, self.addr, self.lease_s)
                self.lease.renewed(asked)
                if self._connected_since is None:
                    self._connected_since = asked
                if self.lease.clock() - self._connected_since >= self.lease_s:
                    await self.sweep()
                self.last_error = None
            except Exception as exc:  # the store is away: the lease lapses, by design
                self._connected_since = None
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("liveness: %s", self.last_error)
            await asyncio.sleep(period)

    async def sweep(self) -> list[str]:
        """Close the runs of expired instances; returns the ones this instance closed."""
        closed = []
        for request_id in await asyncio.to_thread(self.store.abandoned_runs):
            try:
                if await self._close(request_id):
                    closed.append(request_id)
            except Exception:  # one bad run must not keep the others open
                log.exception("liveness: closing abandoned run %s failed", request_id)
        return closed

    async def _close(self, request_id: str) -> bool:
        ended, state = await close_run(self.executor, self.records, request_id)
        if state.session_id:
            await self._free(state.session_id, request_id)
        return ended

    async def _free(self, session_id: str, request_id: str) -> None:
        session = await self.sessions.state(session_id)
        if session.active_run == request_id:
            await self.sessions.release(session_id, request_id, "error_500", [])  # starts the next one here
        elif request_id in session.queue:
            await drop_queued(self.executor, session.stream_id, request_id)
