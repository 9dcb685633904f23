"""A worker follows the projector process through the tracking row only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.events.store import EventStore
from app.projections.db import read_db_path
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
