"""How a projector is driven, whatever database holds its read models.

A projector applies one batch per `_step` (one transaction, blocking: it runs on
a worker thread). This loop steps while there is work, sleeps until it is woken
(or its fallback poll), and lets readers wait for a position. The SQLite runner
and the PostgreSQL runner differ only in the step and in what wakes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["Stepping"]

log = logging.getLogger(__name__)


class Stepping:
    """The driving loop; a subclass gives `_step` and the event that wakes it (`_woken`)."""

    position: int
    last_error: str | None
    _poll: float
    _advanced: asyncio.Event
    _stepping: asyncio.Future[bool] | None

    def _step(self) -> bool:
        """Apply one batch in one transaction; False when there was nothing new."""
        raise NotImplementedError

    def _woken(self) -> asyncio.Event:
        raise NotImplementedError

    def step(self) -> bool:
        """Apply one batch (blocking); False when there was nothing new."""
        return self._step()

    def catch_up(self) -> int:
        """Project everything currently in the store (blocking); returns the position."""
        while self._step():
            pass
        return self.position

    def listening(self) -> bool:
        """Always: this projector runs in this process and is woken by `notify` directly."""
        return True

    async def wait_for(self, position: int, timeout: float) -> bool:
        """True once everything up to `position` is projected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            self._woken().set()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._advanced.clear()
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return self.position >= position
        return True

    async def _run(self) -> None:
        while True:
            try:
                while await self._step_in_thread():
                    self._advanced.set()  # set here: asyncio events are not thread-safe
                self._advanced.set()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("projector step failed: %s", self.last_error)
            self._woken().clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # arrives with the wake-up (stop() right after a notify), and stop() then waits forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._woken().wait()

    async def _step_in_thread(self) -> bool:
        self._stepping = asyncio.get_running_loop().run_in_executor(None, self._step)
        return await asyncio.shield(self._stepping)
