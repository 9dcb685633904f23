"""A store written by an earlier version replays to the same read models, forever.

tests/data/replay/events.db was written by a real `bmo serve` (see
tests/data/replay/generate.py); expected_read_models.json is what replaying it
gave then. An event schema change that cannot read old events, or a projector
change that projects them differently, fails here. Regenerate the fixture
only for a deliberate read-model change, and say so in the commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

from app.events import run, session
from app.events.store import EventStore
from tests.data.replay.replay import EXPECTED, FIXTURE_DIR, replay

FIXTURE = FIXTURE_DIR / "events.db"


def expected() -> dict:
    return json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("batch_size", [500, 7, 1])
def test_the_fixture_replays_to_the_committed_read_models(tmp_path: Path, batch_size: int) -> None:
    assert replay(FIXTURE, tmp_path, batch_size=batch_size) == expected()


def test_the_fixture_covers_every_event_kind_a_server_writes() -> None:
    with sqlite3.connect(FIXTURE) as conn:
        topics = {r[0] for r in conn.execute("SELECT DISTINCT topic FROM stored_events")}
    names = {t.split(":")[1] for t in topics}
    run_events = {name for name in run.__all__ if isinstance(getattr(run, name), type)} - {"RunState"}
    absent = {"Cancelled", "ModelOverrideRejected"}  # no server path writes these today
    assert run_events - absent <= names
    session_events = {"SessionOpened", "RunActivated", "RunQueued", "RunReleased", "QueuedRunDropped"}
    assert session_events | {"TurnNoted"} <= names
    assert "PersistenceRecovered" in names


def test_every_stream_of_the_fixture_decodes_and_folds(tmp_path: Path) -> None:
    """Old events still decode into today's classes, and every run ended exactly once."""
    copy = tmp_path / "events.db"
    copy.write_bytes(FIXTURE.read_bytes())
    store = EventStore(copy)
    with sqlite3.connect(copy) as conn:
        streams = conn.execute("SELECT originator_id, topic FROM stored_events WHERE originator_version = 1")
        firsts = {UUID(str(sid)): topic for sid, topic in streams}
    finished = Counter()
    for stream_id, topic in firsts.items():
        events = store.stream(stream_id)
        assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
        if topic.endswith(":Fired"):
            state = run.fold(stream_id, events)
            assert state.finished and isinstance(events[-1], run.Finished)
            finished[stream_id] += sum(isinstance(e, run.Finished) for e in events)
        elif topic.endswith(":SessionOpened"):
            state = session.fold(stream_id, events)
            assert state.active_run is None and state.queue == ()  # the crash was swept
    store.close()
    assert finished and set(finished.values()) == {1}
