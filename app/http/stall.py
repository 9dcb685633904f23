"""Stalled readers: a client that reads nothing for `stall_timeout_s` is disconnected, and it is recorded.

granian applies backpressure: `send` waits while the client's socket is full, so a slow reader costs a
bounded buffer and holds back only its own run. A reader that stops for good would hold that run, its
upstream connection and its session forever. The watch notes when each response's `send` started to wait;
one timer (armed only while responses are in flight) ends those that waited too long: the run is finished
`cancelled` (499) with a `client stalled` error, then the request's task is cancelled, as for a
disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.agent.lifecycle import RequestLifecycle

__all__ = ["StallWatch"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class _Waiting:
    __slots__ = ("lifecycle", "since", "task")

    def __init__(self, task: asyncio.Task[Any], lifecycle: RequestLifecycle | None) -> None:
        self.task, self.lifecycle = task, lifecycle
        self.since: float | None = None  # when the send in progress started; None between sends


class StallWatch:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._responses: dict[int, _Waiting] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, send: Send, lifecycle: RequestLifecycle | None) -> Send:
        """`send`, timed: the request's task is ended if one call waits longer than the timeout."""
        task = asyncio.current_task()
        if task is None or self.timeout_s <= 0:
            return send
        waiting = _Waiting(task, lifecycle)
        key = id(waiting)

        async def timed(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            waiting.since = time.monotonic()
            self._responses[key] = waiting
            self._arm()
            try:
                await send(message)
            finally:
                waiting.since = None
                if not message.get("more_body", False):
                    self._responses.pop(key, None)

        task.add_done_callback(lambda _: self._responses.pop(key, None))
        return timed

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._period(), self._check)

    def _period(self) -> float:
        return min(1.0, self.timeout_s / 4)

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        for key, waiting in list(self._responses.items()):
            if waiting.since is not None and now - waiting.since >= self.timeout_s:
                self._responses.pop(key, None)
                self._disconnect(waiting)
        if self._responses:
            self._arm()

    def _disconnect(self, waiting: _Waiting) -> None:
        if waiting.lifecycle is not None:  # first finish wins: the stall, not a plain disconnect
            waiting.lifecycle.finish_later(
                "cancelled",
                499,
                error=f"client stalled: read nothing for {self.timeout_s:g} s",
                by="stall_timeout",
            )
        waiting.task.cancel()
