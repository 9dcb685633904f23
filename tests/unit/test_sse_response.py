"""The SSE response body (`app.http.sse_response`): a disconnect ends it quietly, others propagate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.http.sse_response import SseStream, _ASGISseResponse


def _response(body: AsyncIterator[bytes]) -> _ASGISseResponse:
    return _ASGISseResponse(iterator=body, media_type="text/event-stream")


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_the_body_is_sent_whole_and_the_listener_is_gone_afterwards() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(0)  # the listener starts listening meanwhile
        yield b"data: 2\n\n"

    async def scenario() -> None:
        sent: list[dict[str, Any]] = []
        listening: list[asyncio.Task[Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            listening.append(asyncio.current_task())  # type: ignore[arg-type]
            return await _never()

        await _response(body()).send_body(send, receive)
        assert [(m["body"], m["more_body"]) for m in sent] == [
            (b"data: 1\n\n", True),
            (b"data: 2\n\n", True),
            (b"", False),
        ]
        await asyncio.sleep(0)
        assert listening and listening[0].cancelled()

    asyncio.run(scenario())


def test_a_disconnect_cancels_the_body_and_ends_it_quietly() -> None:
    async def scenario() -> None:
        log: list[str] = []
        gone = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                gone.set()
                await asyncio.Event().wait()  # the agent is still working
                yield b"never"
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        async def send(message: dict[str, Any]) -> None:
            pass

        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is not None:  # another message first: the listener keeps listening
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        await _response(body()).send_body(send, receive)  # in this task: no CancelledError here
        assert log == ["cancelled"]
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)  # and no cancellation left pending for the next await

    asyncio.run(scenario())


def test_another_cancellation_still_propagates() -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            started.set()
            await asyncio.Event().wait()
            yield b"never"

        async def send(message: dict[str, Any]) -> None:
            pass

        task = asyncio.ensure_future(_response(body()).send_body(send, _never))
        await started.wait()
        task.cancel()  # a stalled reader's timeout, or shutdown
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_the_stream_answers_with_this_body() -> None:
    stream = SseStream(iter([b"x"]), media_type="text/event-stream")
    response = stream.to_asgi_response(None, None)  # type: ignore[arg-type]
    assert type(response) is _ASGISseResponse


def test_a_receive_that_fails_ends_the_body_as_a_disconnect_would() -> None:
    """Without a working receive nobody would notice the client leaving: the body must not
    run on unwatched (the agent would keep its upstream and tools busy for nobody)."""

    async def scenario() -> None:
        log: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                await asyncio.Event().wait()  # the agent is still working
                yield b"never"
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        async def send(message: dict[str, Any]) -> None:
            pass

        async def receive() -> dict[str, Any]:
            raise RuntimeError("the server's channel broke")

        await asyncio.wait_for(_response(body()).send_body(send, receive), timeout=10)
        assert log == ["cancelled"]

    asyncio.run(scenario())
