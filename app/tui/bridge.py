"""A stand-in for the main loop's thread hand-off, for tests and headless drivers.

`post` queues a callback; the thread that owns the widgets runs them with
`drain` or `wait_until`, the way `MainLoop.call_from_thread` runs them on the
UI thread. `spawn` runs work on a daemon thread, or inline when `inline=True`
(deterministic widget tests against a fake client).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

__all__ = ["QueueBridge"]


class QueueBridge:
    def __init__(self, *, inline: bool = False) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._inline = inline

    def post(self, callback: Callable[[], None]) -> None:
        self._calls.put(callback)

    def spawn(self, work: Callable[[], None]) -> None:
        if self._inline:
            work()
        else:
            threading.Thread(target=work, name="bmo-tui-test-worker", daemon=True).start()

    def drain(self) -> int:
        """Run every queued callback (including ones they queue); how many ran."""
        ran = 0
        while True:
            try:
                callback = self._calls.get_nowait()
            except queue.Empty:
                return ran
            callback()
            ran += 1

    def wait_until(self, predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        """Drain until `predicate()` holds or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(step)
