"""The SQLite projector's shortcuts give exactly what the general paths they replace give.

`NotificationReader` reads the log with its own query and decodes most states
itself; eventsourcing's recorder and mapper (`EventStore.notifications` and
`to_event`) are the reference: every event must come out equal, field order
included, and a store (the replay fixture, written by an earlier version, plus
states only the mapper can read) must project to the very same rows, in the same
order, as through the recorder and mapper with `prune_sql`.

`runs.prune` finds the ledger's cutoff from the oldest end after a `count(*)`;
`runs.prune_sql` (still used on PostgreSQL) walks from the newest end. Over
random ledgers (open and ended runs, capacities below, at and above the size)
both must leave exactly the same rows in both tables.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import MapperDeserialisationError
from hypothesis import given, settings
from hypothesis import strategies as st

from app.events.run import ContentAppended, Queued
from app.events.store import EventStore
from app.projections import runs
from app.projections.db import open_read_db
from app.projections.notifications import NotificationReader
from app.projections.rows import apply_ops
from app.projections.runner import NAME, project_all
from tests.core.helpers import end, fire, now, runner
from tests.data.replay.replay import FIXTURE_DIR

_RUN = (
    "INSERT INTO openai_compat_runs (request_id, seq, session_id, route, model, stream, tool_policy, "
    "ambiguity_action, is_session_reuse, client_ua, requester, task, started_at, ended_seq) "
    "VALUES (?, ?, '', 'chat_completions', 'm', 0, 'p', 'a', 0, 'ua', 'r', 't', 'at', ?)"
)
_EVENT = "INSERT INTO openai_compat_run_events VALUES (?, ?, ?, 'T', 'at', '{}')"


def _ledger(path: Path, ended: list[bool]) -> sqlite3.Connection:
    conn = open_read_db(path).conn
    for i, is_ended in enumerate(ended):
        request_id, seq = f"{i:032x}", 10 * i + 3
        conn.execute(_RUN, (request_id, seq, seq + 2 if is_ended else None))
        for version in (1, 2):
            conn.execute(_EVENT, (request_id, version, seq + version))
    return conn


def _rows(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    runs_rows = conn.execute("SELECT request_id, seq, ended_seq FROM openai_compat_runs ORDER BY seq")
    events = conn.execute("SELECT request_id, version FROM openai_compat_run_events ORDER BY seq")
    return [tuple(r) for r in runs_rows], [tuple(r) for r in events]


@settings(max_examples=60, deadline=None)
@given(ended=st.lists(st.booleans(), max_size=30), capacity=st.integers(min_value=1, max_value=35))
def test_prune_deletes_what_prune_sql_deletes(ended: list[bool], capacity: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = _ledger(Path(tmp) / "plain.db", ended)
        fast = _ledger(Path(tmp) / "fast.db", ended)
        for sql, params in runs.prune_sql(capacity):
            plain.execute(sql, params)
        runs.prune(fast, capacity)
        assert _rows(fast) == _rows(plain)
        plain.close()
        fast.close()


def _odd_store(tmp: Path) -> EventStore:
    """The replay fixture plus states the short decode must hand to the mapper."""
    shutil.copy(FIXTURE_DIR / "events.db", tmp / "events.db")
    store = EventStore(tmp / "events.db")
    run_id = fire(store)
    odd: dict[str, Any] = {
        "a uuid": uuid4(),  # a nested registered type
        "a key like the wrapper's": {"_type_": "x"},
        "big": 1e20,  # json writes the exponent form
        "nan": float("nan"),  # json writes NaN, which msgspec refuses to read
        "text": 'quotes "_type_" and \\ backslashes',
    }
    for name, value in odd.items():  # one a state: each must be read right on its own
        at = {"originator_id": uuid4(), "originator_version": 1, "timestamp": now()}
        messages = [{name: value}]
        store.save([Queued(**at, session_id="s", position=1, by_request="r", messages=messages, options={})])
    text = {"originator_id": run_id, "originator_version": 2, "timestamp": now(), "role": "assistant"}
    store.save([ContentAppended(**text, text='say "_type_": {"_data_": 1}')])
    end(store, run_id)
    return store


def _same(a: object, b: object) -> bool:
    """Equal events: class, fields and their order (NaN compares by its text)."""
    return type(a) is type(b) and repr(list(vars(a).items())) == repr(list(vars(b).items()))


def test_the_reader_builds_every_event_as_the_mapper_does(tmp_path: Path) -> None:
    store = _odd_store(tmp_path)
    reader = NotificationReader(store)
    mapped = [(note.id, store.to_event(note)) for note in store.notifications(0, 100_000)]
    for after, limit in ((0, 100_000), (3, 7)):
        read = reader.read(after, limit)
        want = [m for m in mapped if m[0] > after][:limit]
        assert [i for i, _ in read] == [i for i, _ in want]
        assert all(_same(got, ref) for (_, got), (_, ref) in zip(read, want, strict=True))
    assert len(mapped) > 100 and isinstance(read[0][1].originator_id, UUID)
    reader.close()
    store.close()


def _project_by_mapper(store: EventStore, db: Path, capacity: int) -> None:
    """The projector's step as it was: eventsourcing's recorder and mapper, `prune_sql`."""
    conn = open_read_db(db).conn
    position = 0
    while notes := store.notifications(position, 500):
        conn.execute("BEGIN IMMEDIATE")
        for note in notes:
            apply_ops(conn, project_all(store.to_event(note), note.id))
        position = notes[-1].id
        conn.execute("INSERT OR REPLACE INTO projection_tracking VALUES (?, ?)", (NAME, position))
        for sql, params in runs.prune_sql(capacity):
            conn.execute(sql, params)
        conn.execute("COMMIT")
    conn.close()


def _tables_in_rowid_order(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            n: [tuple(r) for r in conn.execute(f"SELECT rowid, * FROM {n} ORDER BY rowid")] for n in names
        }


def test_a_store_projects_to_the_same_rows_as_through_the_mapper(tmp_path: Path) -> None:
    store = _odd_store(tmp_path)
    for capacity in (10_000, 7):
        reference = tmp_path / f"reference-{capacity}.db"
        _project_by_mapper(store, reference, capacity)
        projector = runner(store, tmp_path / str(capacity), ledger_capacity=capacity, batch_size=500)
        projector.catch_up()
        projector.close()
        got = _tables_in_rowid_order(tmp_path / str(capacity) / "read_models.db")
        assert got == _tables_in_rowid_order(reference)
        assert len(got["openai_compat_run_events"]) > (100 if capacity > 7 else 7)
    store.close()


def test_a_state_the_mapper_refuses_fails_the_read_as_the_mapper_fails_it(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    run_id = fire(store)
    with sqlite3.connect(store.path) as conn:
        state = b'{"timestamp":{"_type_":"datetime_iso","_data_":"not a time"},"text":"x","role":"assistant"}'
        topic = "app.events.run:ContentAppended"
        conn.execute("INSERT INTO stored_events VALUES (?, 2, ?, ?)", (run_id.hex, topic, state))
    reader = NotificationReader(store)
    with pytest.raises(MapperDeserialisationError, match="not a time"):
        reader.read(0, 10)
    with pytest.raises(MapperDeserialisationError):
        store.to_event(store.notifications(1, 1)[0])
    reader.close()
    store.close()
