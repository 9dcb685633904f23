"""Rendering an agent turn on the wire: one JSON completion, or an SSE stream."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar import Response

from app.agent.lifecycle import RequestLifecycle
from app.agent.loop import AgentEvent, ClientToolCalls, Done, TextChunk
from app.errors import ClientGone, ServiceUnavailable
from app.http import sse
from app.http.errors import envelope, to_bmo_error
from app.http.sse_response import SseStream
from app.http.wire import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    ResponseToolCall,
    UsageWire,
)
from app.providers.base import ToolCall, Usage

__all__ = [
    "KEEP_ALIVE_S",
    "ChatCompletion",
    "DisconnectWatch",
    "Meta",
    "complete",
    "respond",
    "stream",
]

KEEP_ALIVE_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_GONE = "client disconnected"

DisconnectWatch = Callable[[], Awaitable[None]]  # returns when the client has gone away


async def respond(
    first: AgentEvent,
    events: AsyncIterator[AgentEvent],
    lifecycle: RequestLifecycle,
    meta: Meta,
    streaming: bool,
    include_usage: bool,
    watch: DisconnectWatch | None = None,
) -> Response[Any]:
    """SSE (a disconnect cancels the body's generator), or one JSON completion (`watch`
    tells when its client has gone: then the run is cancelled just the same)."""
    if streaming:
        body = stream(first, events, lifecycle, meta, include_usage)
        return SseStream(body, media_type="text/event-stream", headers=SSE_HEADERS)
    if watch is None:
        return await complete(first, events, lifecycle, meta)
    return await _complete_unless_gone(complete(first, events, lifecycle, meta), lifecycle, watch)


async def _complete_unless_gone(
    answer: Awaitable[Response[Any]], lifecycle: RequestLifecycle, watch: DisconnectWatch
) -> Response[Any]:
    """A non-streaming client that disconnects cancels its run, as a stream's does.

    The agent's work runs in a task; if the client goes first, that task is
    cancelled (the agent generator unwinds in it, its tools' processes die) and
    the run ends `cancelled` (499), which releases its session.
    """
    work = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        lifecycle.finish_later("cancelled", 499, error=CLIENT_GONE)
        raise
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    await lifecycle.finish("cancelled", 499, error=CLIENT_GONE)
    error = envelope(ClientGone("The client disconnected; the run was cancelled."))
    return Response(error, status_code=499, media_type="application/json")


class Meta:
    __slots__ = ("created", "id", "model")

    def __init__(self, id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = id, created, model

    def chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])


def _usage(usage: Usage) -> UsageWire:
    return UsageWire(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _wire_calls(calls: tuple[ToolCall, ...]) -> list[ResponseToolCall]:
    return [ResponseToolCall(id=c.id, function=FunctionCall(c.name, c.arguments)) for c in calls]


def _delta_calls(calls: tuple[ToolCall, ...]) -> list[DeltaToolCall]:
    return [
        DeltaToolCall(index=i, id=c.id, function=FunctionCall(c.name, c.arguments))
        for i, c in enumerate(calls)
    ]


async def complete(
    first: AgentEvent,
    events: AsyncIterator[AgentEvent],
    lifecycle: RequestLifecycle,
    meta: Meta,
) -> Response[Any]:
    texts: list[str] = []
    calls: tuple[ToolCall, ...] = ()
    upcoming = _KeepAlive(events, lifecycle)
    event: AgentEvent | None = first
    try:
        while not isinstance(event, Done):
            if isinstance(event, TextChunk):
                texts.append(event.text)
            elif isinstance(event, ClientToolCalls):
                calls = event.calls
            event = await upcoming.next()
    except BaseException:
        upcoming.abandon()
        raise
    await events.aclose()  # type: ignore[attr-defined]
    await _not_closed_elsewhere(lifecycle)
    message = ResponseMessage(
        role="assistant",
        content="".join(texts) or (None if calls else ""),
        tool_calls=_wire_calls(calls) if calls else None,
    )
    completion = ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[Choice(index=0, message=message, finish_reason=event.finish_reason)],
        usage=_usage(event.usage),
    )
    await lifecycle.finish(event.outcome, 200, finish_reason=event.finish_reason)
    return Response(completion, status_code=200, media_type="application/json")


async def _not_closed_elsewhere(lifecycle: RequestLifecycle) -> None:
    """On a shared store another instance may have closed this run (our lease lapsed while
    we were paused): the client must not take what follows for a recorded answer."""
    if await lifecycle.executor.closed_elsewhere(lifecycle.run_id):
        raise ServiceUnavailable(
            "This run was closed by another bmo instance while this one was unresponsive "
            "(its lease expired); the answer was not recorded. Send the request again.",
            code="run_closed_elsewhere",
        )


async def stream(
    first: AgentEvent,
    events: AsyncIterator[AgentEvent],
    lifecycle: RequestLifecycle,
    meta: Meta,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body; events that are ready together leave in one body part (see `_Batch`)."""
    upcoming = _KeepAlive(events, lifecycle)
    batch = _Batch()
    try:
        batch.add(sse.event(meta.chunk(Delta(role="assistant", content=""))))
        event: AgentEvent | None = first
        while not isinstance(event, Done):
            if isinstance(event, TextChunk):
                batch.add(sse.event(meta.chunk(Delta(content=event.text))))
            elif isinstance(event, ClientToolCalls):
                batch.add(sse.event(meta.chunk(Delta(tool_calls=_delta_calls(event.calls)))))
            event = await upcoming.ready() if not batch.full() else None
            if event is None:  # the agent is still working: what is rendered goes now
                if batch:
                    yield batch.take()
                event = await upcoming.next()
            while event is None:  # tools are still running: keep proxies and clients patient
                yield sse.KEEP_ALIVE
                event = await upcoming.next()
        await _not_closed_elsewhere(lifecycle)
        batch.add(sse.event(meta.chunk(Delta(), finish_reason=event.finish_reason)))
        if include_usage:
            usage = ChatCompletionChunk(
                id=meta.id, created=meta.created, model=meta.model, choices=[], usage=_usage(event.usage)
            )
            batch.add(sse.event(usage))
        yield batch.take()
        await lifecycle.finish(event.outcome, 200, finish_reason=event.finish_reason)
        yield sse.DONE
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away. Cancellation may be level-triggered (anyio), so no
        # awaiting here: stop the agent (its tools' processes die with it) and let
        # the lifecycle record `cancelled` in a task of its own.
        upcoming.abandon()
        lifecycle.finish_later("cancelled", 499, error=CLIENT_GONE)
        raise
    except Exception as exc:  # after headers, errors travel in the stream
        upcoming.abandon()
        error = to_bmo_error(exc)
        batch.add(sse.event(envelope(error)))  # after what was rendered before the error
        yield batch.take()
        # finish (and release the session) before [DONE]: a client that leaves on
        # [DONE] must not be able to cancel the release
        await lifecycle.finish("error_500", error.status, error=error.ledger_error)
        yield sse.DONE
    else:
        await events.aclose()  # type: ignore[attr-defined]


class _Batch:
    """SSE events rendered but not yet handed to the server, sent as one body part.

    Each body part costs a trip through the ASGI send chain, granian's channel and a socket
    write (~10 µs of the loop thread and as much of granian's, more than rendering the
    chunk): when an upstream delivers many chunks at once, they leave together. Only events
    the agent produced without waiting are gathered (`_KeepAlive.ready`), so no chunk waits
    for a later one; `MAX_BYTES` bounds what a fast upstream can gather.
    """

    MAX_BYTES = 16 * 1024
    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, part: bytes) -> None:
        self._parts.append(part)
        self._size += len(part)

    def full(self) -> bool:
        return self._size >= self.MAX_BYTES

    def take(self) -> bytes:
        parts, self._parts, self._size = self._parts, [], 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _KeepAlive:
    """Pulls agent events in a task so the stream can say `: keep-alive` meanwhile.

    A pull takes every event the agent produces without waiting (the chunks of one
    upstream read), up to `RUN_MAX`, and stops after the first event that took a wait:
    one task and one loop turn per run of ready events instead of per event (a task and a
    turn per chunk were most of a streamed chunk's loop-thread cost). The events it took are
    exactly those the stream would have asked for at once (`ready`), so nothing is pulled
    ahead of the stream beyond the one event that `next` or `ready` leaves in flight.
    It also watches the process's shutdown drain: past its deadline, `next` raises `Interrupted`.
    """

    RUN_MAX = 64

    def __init__(
        self, events: AsyncIterator[AgentEvent], lifecycle: RequestLifecycle, every_s: float = KEEP_ALIVE_S
    ) -> None:
        self._events = events
        self._every = every_s
        self._taken: deque[AgentEvent] = deque()  # pulled, not yet handed over
        self._error: Exception | None = None  # what the agent raised, once `_taken` is handed over
        self._pending: asyncio.Task[None] | None = None
        self._drain = lifecycle.drain

    async def ready(self) -> AgentEvent | None:
        """The next event if the agent produced it without waiting, else None (the pull
        stays in flight: `next` takes it)."""
        event = self._pop()
        if event is None:
            await self._started()
            event = self._pop()
        return event

    async def next(self) -> AgentEvent | None:
        """The next event, or None when `every_s` passed without one."""
        event = self._pop()
        if event is not None:
            return event
        pending = await self._started()
        if not pending.done() and not self._taken:
            await self._first_of(pending)
        event = self._pop()
        if event is None and self._drain is not None and self._drain.interrupted:
            raise self._drain.error()
        return event

    def _pop(self) -> AgentEvent | None:
        """The oldest event taken; once they are handed over, the agent's error (StopAsyncIteration
        at its end); None while the pull waits."""
        if self._taken:
            return self._taken.popleft()
        if self._error is not None:
            raise self._error
        if self._pending is not None and self._pending.cancelled():
            # the agent itself was cancelled (not by `abandon`, which drops the pull): the
            # stream ends cancelled, never with a keep-alive and a pull past the agent's end
            raise asyncio.CancelledError
        return None

    async def _started(self) -> asyncio.Task[None]:
        """The pull in flight, started now (and given its first loop turn) if there was none."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._pull())
            # One loop turn lets the pull take its first step: when the events were already
            # buffered (most chunks of a stream) they are taken now, and the waiter, the
            # keep-alive timer and a second loop turn are skipped (~8 % of a streamed
            # request's loop-thread CPU, docs/performance-analysis.md).
            await asyncio.sleep(0)
        return self._pending

    async def _pull(self) -> None:
        """Take events while they come without a wait; stop after one that came after a wait."""
        waited: list[bool] = []
        turn = asyncio.get_running_loop().call_soon(waited.append, True)  # runs if the pull waits
        try:
            for _ in range(self.RUN_MAX):
                event = await anext(self._events)
                self._taken.append(event)
                if waited or isinstance(event, Done):
                    return
        except Exception as exc:  # for `next`, after the events taken before it
            self._error = exc
        finally:
            turn.cancel()

    async def _first_of(self, pending: asyncio.Future[None]) -> None:
        """Until the event, the drain's deadline or `every_s`, whichever comes first.

        What `asyncio.wait(..., FIRST_COMPLETED, timeout)` does, with one waiter and
        plain callbacks: it runs once per agent event (20+ times for a streamed answer),
        and `asyncio.wait`'s sets, its `_wait` coroutine and its per-future
        bookkeeping cost ~23 µs per event against ~12 µs here (measured in
        docs/performance-analysis.md).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = loop.call_later(self._every, wake)
        pending.add_done_callback(wake)
        drain = self._drain.future() if self._drain is not None else None
        if drain is not None:
            drain.add_done_callback(wake)
        try:
            await waiter
        finally:
            timer.cancel()
            pending.remove_done_callback(wake)
            if drain is not None:
                drain.remove_done_callback(wake)

    def abandon(self) -> None:
        """Cancel the pull in flight; the agent generator unwinds inside that task."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._taken.clear()
