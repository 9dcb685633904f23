"""A worker follows the projector process through the tracking row only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.events.store import EventStore
from app.projections.db import read_db_path
from app.projections.doorbell import DoorbellListener, socket_path
from app.projections.follower import ProjectionFollower
from tests.core.helpers import fire, runner


def test_the_follower_sees_exactly_the_projectors_position(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    follower = ProjectionFollower(read_db_path(tmp_path), poll_s=0.001)
    assert follower.position == 0  # no read models yet: position 0, not an error
    projector = runner(store, tmp_path)
    fire(store)
    fire(store)
    head = store.max_notification_id()

    async def scenario() -> tuple[bool, bool, int]:
        early = await follower.wait_for(head, timeout=0.05)  # nothing projected yet
        projector.catch_up()
        late = await follower.wait_for(head, timeout=5)
        position = follower.position
        await follower.stop()
        return early, late, position

    early, late, position = asyncio.run(scenario())
    assert (early, late, position) == (False, True, head)
    projector.close()


def test_a_follower_waiting_sees_the_projector_catch_up_meanwhile(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    projector = runner(store, tmp_path)
    fire(store)
    head = store.max_notification_id()
    follower = ProjectionFollower(read_db_path(tmp_path), poll_s=0.001)

    async def scenario() -> bool:
        waiting = asyncio.create_task(follower.wait_for(head, timeout=30))
        await asyncio.sleep(0)  # the wait has started and found nothing projected
        assert not waiting.done()
        await asyncio.to_thread(projector.catch_up)
        reached = await waiting
        await follower.stop()
        return reached

    assert asyncio.run(scenario()) is True
    projector.close()


def test_a_follower_reports_a_missing_read_model_and_reconnects_after_stop(tmp_path: Path) -> None:
    follower = ProjectionFollower(read_db_path(tmp_path))
    assert follower.last_error is None
    assert follower.position == 0 and "projection_tracking" in (follower.last_error or "")
    store = EventStore(tmp_path / "events.db")
    projector = runner(store, tmp_path)
    fire(store)
    projector.catch_up()

    async def scenario() -> tuple[int, int]:
        await follower.stop()
        await follower.stop()  # twice is harmless
        here = follower.position
        # a worker thread may ask too (the connection is not tied to the thread that opened it)
        return here, await asyncio.to_thread(lambda: follower.position)

    head = store.max_notification_id()
    assert asyncio.run(scenario()) == (head, head)
    projector.close()


def test_a_follower_knows_whether_the_projector_process_listens(tmp_path: Path) -> None:
    """Readiness waits for this: before the projector binds its doorbell, a worker's rings are lost."""
    follower = ProjectionFollower(read_db_path(tmp_path))
    assert follower.listening() is False
    listener = DoorbellListener(socket_path(tmp_path))
    try:
        assert follower.listening() is True
    finally:
        listener.close()
    assert follower.listening() is False
    asyncio.run(follower.stop())


def test_many_waiting_reads_share_one_poll(tmp_path: Path) -> None:
    """A read that waits costs no poll of its own: a few hundred waiting probes must not
    each query the tracking row every tick (they filled the worker's event loop)."""
    store = EventStore(tmp_path / "events.db")
    projector = runner(store, tmp_path)
    fire(store)
    head = store.max_notification_id()
    reads = 0

    class Counting(ProjectionFollower):
        @property
        def position(self) -> int:
            nonlocal reads
            reads += 1
            return super().position

    follower = Counting(read_db_path(tmp_path), poll_s=0.001)

    async def scenario() -> tuple[int, list[bool]]:
        waits = [asyncio.create_task(follower.wait_for(head, timeout=30)) for _ in range(200)]
        while reads < 200:  # each wait looked once on its way in
            await asyncio.sleep(0)
        before = reads
        while reads == before:  # the first poll tick
            await asyncio.sleep(0)
        one_tick = reads - before
        await asyncio.to_thread(projector.catch_up)
        reached = await asyncio.gather(*waits)
        await follower.stop()
        return one_tick, reached

    one_tick, reached = asyncio.run(scenario())
    assert one_tick == 1  # one SELECT for all 200 waiting reads (a poll each: 200)
    assert reached == [True] * 200
    projector.close()


def test_a_wait_that_times_out_leaves_no_waiter_behind(tmp_path: Path) -> None:
    follower = ProjectionFollower(read_db_path(tmp_path), poll_s=0.001)

    async def scenario() -> tuple[bool, int]:
        reached = await follower.wait_for(10, timeout=0.01)
        left = len(follower._waiters)
        await follower.stop()
        return reached, left

    assert asyncio.run(scenario()) == (False, 0)
