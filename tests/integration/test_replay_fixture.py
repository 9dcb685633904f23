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
from typing import Any
from uuid import UUID

import pytest

from app.events import run, session
from app.events.store import EventStore
from tests.data.replay.replay import EXPECTED, FIXTURE_DIR, replay

FIXTURE = FIXTURE_DIR / "events.db"


def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def _cell_keeps(got: Any, old: Any) -> bool:
    """A cell holds what it held; an event's JSON data may only gain fields (added since, with defaults)."""
    if got == old:
        return True
    if isinstance(got, str) and isinstance(old, str) and old.startswith("{"):
        try:
            new_data, old_data = json.loads(got), json.loads(old)
        except ValueError:
            return False
        return isinstance(new_data, dict) and all(new_data.get(k, object()) == v for k, v in old_data.items())
    return False


def _keeps(got: dict[str, list[list[Any]]], old: dict[str, list[list[Any]]]) -> list[str]:
    """Where today's replay lost or changed what the fixture's read models held (columns may be added)."""
    problems = []
    for table, rows in old.items():
        now = got.get(table)
        if now is None or len(now) != len(rows):
            problems.append(f"{table}: {len(rows)} rows then, {len(now or [])} now")
            continue
        for new_row, old_row in zip(sorted(now, key=repr), rows, strict=True):
            same = len(new_row) >= len(old_row) and all(map(_cell_keeps, new_row, old_row))
            if not same:
                problems.append(f"{table}: {old_row} became {new_row}")
    return problems


@pytest.mark.parametrize("batch_size", [500, 7, 1])
def test_the_fixture_replays_to_the_committed_read_models(tmp_path: Path, batch_size: int) -> None:
    assert _keeps(replay(FIXTURE, tmp_path, batch_size=batch_size), expected()) == []


def test_the_comparison_notices_a_lost_or_changed_value() -> None:
    old = {"t": [["a", '{"x": 1}']]}
    assert _keeps({"t": [["a", '{"x": 1, "added": ""}', "new column"]]}, old) == []
    assert _keeps({"t": [["a", '{"x": 2}']]}, old) != []
    assert _keeps({"t": [["b", '{"x": 1}']]}, old) != []
    assert _keeps({"t": []}, old) != []


def test_the_fixture_covers_every_event_kind_a_server_writes() -> None:
    with sqlite3.connect(FIXTURE) as conn:
        topics = {r[0] for r in conn.execute("SELECT DISTINCT topic FROM stored_events")}
    names = {t.split(":")[1] for t in topics}
    run_events = {name for name in run.__all__ if isinstance(getattr(run, name), type)} - {"RunState"}
    absent = {"ModelOverrideRejected"}  # no server path writes it today
    newer = {"Cancelled", "ClientToolsIgnored", "HistoryDiverged"}  # written since the fixture was made
    assert run_events - absent - newer <= names
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
