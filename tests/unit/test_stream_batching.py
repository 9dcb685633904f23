"""The SSE body's parts (`chat_render.stream`): what is ready together leaves together, nothing waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from app.agent.loop import Done, Progress, TextChunk
from app.http import sse
from app.http.chat_render import Meta, _Batch, stream
from app.http.wire import ChatCompletionChunk, Delta, UsageWire
from app.providers.base import Usage

META = Meta("chatcmpl-test", 1700000000, "m")
USAGE = Usage(prompt_tokens=3, completion_tokens=2)


class _Lifecycle:
    """What `stream` uses of a RequestLifecycle: it notes when the run was finished."""

    def __init__(self) -> None:
        self.drain = None
        self.run_id = "run"
        self.finished: list[tuple[str, int]] = []

        async def closed_elsewhere(_: object) -> bool:
            return False

        self.executor = SimpleNamespace(closed_elsewhere=closed_elsewhere)

    async def finish(self, outcome: str, status: int, **_: Any) -> None:
        self.finished.append((outcome, status))

    def finish_later(self, *_: Any, **__: Any) -> None:
        raise AssertionError("not cancelled in these tests")


def _expected(texts: list[str], include_usage: bool) -> bytes:
    """The stream's bytes, rendered event by event as the wire format defines them."""
    parts = [sse.event(META.chunk(Delta(role="assistant", content="")))]
    parts += [sse.event(META.chunk(Delta(content=t))) for t in texts]
    parts.append(sse.event(META.chunk(Delta(), finish_reason="stop")))
    if include_usage:
        usage = UsageWire(3, 2, 5)
        parts.append(
            sse.event(ChatCompletionChunk(id=META.id, created=1700000000, model="m", choices=[], usage=usage))
        )
    return b"".join(parts) + sse.DONE


async def _parts(body: AsyncIterator[bytes]) -> list[bytes]:
    return [part async for part in body]


def test_chunks_ready_together_leave_in_one_part_with_the_same_bytes() -> None:
    async def events() -> AsyncIterator[object]:
        for text in ("b", "c", "d"):
            yield TextChunk(text)
        yield Done("stop", USAGE)

    async def scenario() -> None:
        lifecycle = _Lifecycle()
        body = stream(TextChunk("a"), events(), lifecycle, META, include_usage=True)  # type: ignore[arg-type]
        parts = await _parts(body)
        assert b"".join(parts) == _expected(["a", "b", "c", "d"], include_usage=True)
        assert len(parts) == 2  # everything up to the usage chunk, then [DONE] after the finish
        assert parts[-1] == sse.DONE
        assert lifecycle.finished == [("final_answer", 200)]

    asyncio.run(scenario())


def test_a_chunk_is_not_held_back_while_the_agent_waits() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def events() -> AsyncIterator[object]:
            yield TextChunk("b")
            await gate.wait()  # the upstream is slow here
            yield TextChunk("c")
            yield Done("stop", USAGE)

        body = stream(Progress(), events(), _Lifecycle(), META, include_usage=False)  # type: ignore[arg-type]
        first = await asyncio.wait_for(anext(body), timeout=10)
        assert not gate.is_set()  # sent while the next pull is still waiting
        assert first == sse.event(META.chunk(Delta(role="assistant", content=""))) + sse.event(
            META.chunk(Delta(content="b"))
        )
        gate.set()
        rest = await _parts(body)
        assert first + b"".join(rest) == _expected(["b", "c"], include_usage=False)

    asyncio.run(scenario())


def test_an_error_follows_what_was_rendered_before_it() -> None:
    async def events() -> AsyncIterator[object]:
        yield TextChunk("b")
        raise RuntimeError("upstream broke")

    async def scenario() -> None:
        lifecycle = _Lifecycle()
        body = stream(TextChunk("a"), events(), lifecycle, META, include_usage=False)  # type: ignore[arg-type]
        data = b"".join(await _parts(body))
        content = sse.event(META.chunk(Delta(content="a"))) + sse.event(META.chunk(Delta(content="b")))
        assert data.index(content) < data.index(b'"error"') < data.index(sse.DONE)
        assert lifecycle.finished == [("error_500", 500)]

    asyncio.run(scenario())


def test_a_batch_is_bounded() -> None:
    batch = _Batch()
    while not batch.full():
        batch.add(b"x" * 1000)
    assert len(batch.take()) == _Batch.MAX_BYTES - _Batch.MAX_BYTES % 1000 + 1000
    assert not batch
