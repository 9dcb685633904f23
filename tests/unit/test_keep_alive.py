"""The stream's event pull (`chat_render._KeepAlive`): event, keep-alive tick, drain, abandon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from app.agent.drain import Drain
from app.errors import Interrupted
from app.http.chat_render import _KeepAlive


def _pull(events: AsyncIterator[object], every_s: float = 30.0, drain: Drain | None = None) -> _KeepAlive:
    return _KeepAlive(events, SimpleNamespace(drain=drain), every_s=every_s)  # type: ignore[arg-type]


async def _gated(gate: asyncio.Event, log: list[str]) -> AsyncIterator[object]:
    try:
        yield "first"
        await gate.wait()
        yield "second"
    finally:
        log.append("closed")


def test_events_in_order_then_the_end() -> None:
    async def scenario() -> None:
        gate, log = asyncio.Event(), []
        gate.set()
        pull = _pull(_gated(gate, log))
        assert [await pull.next(), await pull.next()] == ["first", "second"]
        with pytest.raises(StopAsyncIteration):
            await pull.next()

    asyncio.run(scenario())


def test_a_quiet_agent_yields_keep_alive_ticks_and_the_same_pull_delivers_later() -> None:
    async def scenario() -> None:
        gate, log = asyncio.Event(), []
        pull = _pull(_gated(gate, log), every_s=0.01)
        assert await pull.next() == "first"
        assert await pull.next() is None  # nothing within every_s: the stream says `: keep-alive`
        assert await pull.next() is None
        gate.set()
        assert await pull.next() == "second"  # the pull in flight was kept, not restarted
        assert log == []

    asyncio.run(scenario())


def test_the_drain_deadline_interrupts_a_waiting_pull() -> None:
    async def scenario() -> None:
        gate, log = asyncio.Event(), []
        drain = Drain(timeout_s=0)
        pull = _pull(_gated(gate, log), drain=drain)
        assert await pull.next() == "first"
        waiting = asyncio.ensure_future(pull.next())
        await asyncio.sleep(0)
        drain.interrupt()
        with pytest.raises(Interrupted):
            await asyncio.wait_for(waiting, timeout=10)
        pull.abandon()

    asyncio.run(scenario())


def test_an_agent_error_reaches_the_caller() -> None:
    async def failing() -> AsyncIterator[object]:
        yield "first"
        raise RuntimeError("upstream broke")

    async def scenario() -> None:
        pull = _pull(failing())
        assert await pull.next() == "first"
        with pytest.raises(RuntimeError, match="upstream broke"):
            await pull.next()

    asyncio.run(scenario())


def test_abandon_unwinds_the_agent_inside_its_pull() -> None:
    async def scenario() -> None:
        gate, log = asyncio.Event(), []
        pull = _pull(_gated(gate, log), every_s=0.01)
        assert await pull.next() == "first"
        assert await pull.next() is None
        pull.abandon()
        for _ in range(100):  # the cancelled pull runs its `finally` on a later loop turn
            if log:
                break
            await asyncio.sleep(0)
        assert log == ["closed"]

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_no_callback_behind() -> None:
    async def scenario() -> None:
        gate, log = asyncio.Event(), []
        pull = _pull(_gated(gate, log))
        assert await pull.next() == "first"
        waiting = asyncio.ensure_future(pull.next())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        assert await pull.next() == "second"

    asyncio.run(scenario())


def test_events_ready_together_are_taken_by_one_pull_in_one_task() -> None:
    async def scenario() -> None:
        tasks: list[object] = []

        async def ready_at_once() -> AsyncIterator[object]:
            for i in range(5):
                tasks.append(asyncio.current_task())
                yield i

        pull = _pull(ready_at_once())
        assert [await pull.next()] + [await pull.ready() for _ in range(4)] == [0, 1, 2, 3, 4]
        assert len(set(map(id, tasks))) == 1  # one pull task (and loop turn) for the run, not one per event

    asyncio.run(scenario())


def test_nothing_is_pulled_past_an_event_that_came_after_a_wait() -> None:
    async def scenario() -> None:
        gate, produced = asyncio.Event(), []

        async def events() -> AsyncIterator[object]:
            for name in ("a", "b", "c"):
                if name == "b":
                    await gate.wait()  # the upstream is slow here
                produced.append(name)
                yield name

        pull = _pull(events())
        assert await pull.next() == "a"
        assert await pull.ready() is None  # "b" needs a wait: the pull stays in flight
        gate.set()
        assert await pull.next() == "b"
        assert produced == ["a", "b"]  # "c" is pulled only when asked for
        assert await pull.ready() == "c"

    asyncio.run(scenario())


def test_an_agent_that_is_cancelled_inside_ends_the_stream_cancelled() -> None:
    """The agent raising CancelledError (it awaited a task someone cancelled) is not
    "no event yet": the caller sees the cancellation, as with one pull per event."""

    async def cancelled_inside() -> AsyncIterator[object]:
        yield "first"
        raise asyncio.CancelledError

    async def scenario() -> None:
        pull = _pull(cancelled_inside())
        assert await pull.next() == "first"
        with pytest.raises(asyncio.CancelledError):
            await pull.next()

    asyncio.run(scenario())
