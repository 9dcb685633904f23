"""Graceful shutdown of one serving process: drain in-flight runs until a deadline, then interrupt them.

granian's worker stops accepting on SIGTERM/SIGINT and then waits for every open response, however
long it lasts. The drain watches the signals beside granian's own handler: the first signal starts a
deadline (`[options.http_server] shutdown_timeout_s`) while granian stops accepting; when the deadline
passes, or a second signal arrives, every run still in flight is interrupted (terminal `error_500`,
reason `interrupted`, and a final error chunk on a stream), so the worker's lifespan shutdown can flush
events, records and spans.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from app.errors import Interrupted

__all__ = ["Drain"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Ctrl-C reaches a worker twice (the terminal's SIGINT and the main process's SIGTERM): one intent.
SAME_SIGNAL_WINDOW_S = 1.0


class Drain:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.started_at: float | None = None
        self._interrupted: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    @property
    def interrupted(self) -> bool:
        return self._interrupted is not None and self._interrupted.done()

    def future(self) -> asyncio.Future[None]:
        """Done once runs in flight must end; shared by every waiter (no task per request)."""
        if self._interrupted is None:
            self._interrupted = asyncio.get_running_loop().create_future()
        return self._interrupted

    def error(self) -> Interrupted:
        return Interrupted(
            "bmo is shutting down and interrupted this run "
            f"(it was still running {self.timeout_s:g} s after the shutdown began). "
            "Send the request again once bmo is back; what the run produced so far can be replayed with "
            "the header X-BMO-Resume-Run-Id in the same session."
        )

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch SIGTERM/SIGINT beside granian's own handler, which still stops the worker accepting.

        The event loop dispatches its handlers through the signal wakeup fd, whatever the Python-level
        handler is; so ours is installed at the Python level and hands the one it replaces the signal too.
        """
        if threading.current_thread() is not threading.main_thread():  # in-process tests: no signals
            return
        for sig in SIGNALS:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.on_signal)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def on_signal(self) -> None:
        now = time.monotonic()
        if self.started_at is None:
            self.started_at = now
            log.warning("shutdown: draining runs in flight for up to %g s", self.timeout_s)
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self.interrupt)
        elif now - self.started_at >= SAME_SIGNAL_WINDOW_S:
            log.warning("shutdown: second signal, interrupting runs in flight now")
            self.interrupt()

    def interrupt(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        done = self.future()
        if not done.done():
            done.set_result(None)
