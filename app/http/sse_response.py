"""The SSE response: Litestar's `Stream`, with its client-disconnect watch on plain asyncio.

Litestar sends a streamed body inside an anyio task group: one task streams, the
other awaits the next ASGI message and cancels the group's scope on `http.disconnect`.
Entering and leaving that task group (a cancel scope, a child task, anyio's cancellation
delivery) costs ~30 µs of the event loop per streamed response, several times the rest
of the body's machinery. Here the body is streamed in the request's own task and one
plain task listens: a disconnect cancels the streaming, which then ends quietly, as it
does in Litestar (the body's generator sees the cancellation and records the run
`cancelled`); any other cancellation (a stalled reader, shutdown) still propagates.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

__all__ = ["SseStream"]

log = logging.getLogger(__name__)


class _Disconnect:
    """Cancels the streaming task when the client goes away, and remembers that it did."""

    __slots__ = ("cancelled", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelled = False

    async def listen(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass  # a server that says more (another body part): keep listening, as Litestar does
        except Exception:  # a broken receive can no longer tell a disconnect: end the body as if gone
            log.warning("the client's connection could not be watched; the answer ends", exc_info=True)
        self.cancelled = True
        self.task.cancel()


class _ASGISseResponse(ASGIStreamingResponse):
    __slots__ = ()  # the layout of Litestar's response: `SseStream` swaps the class in place

    async def send_body(self, send: Send, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel, Litestar's way
            await super().send_body(send, receive)
            return
        disconnect = _Disconnect(task)
        listener = asyncio.get_running_loop().create_task(disconnect.listen(receive))
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            # The disconnect's own cancellation ends the body quietly; another one (a stall,
            # shutdown) counted on top of it still propagates.
            if not disconnect.cancelled or task.uncancel() > 0:
                raise
        finally:
            listener.cancel()


class SseStream(Stream):
    """`Stream`, answered by `_ASGISseResponse` (same headers, same body events)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        base = super().to_asgi_response(*args, **kwargs)
        base.__class__ = _ASGISseResponse  # same slots, only `send_body` differs
        return base
