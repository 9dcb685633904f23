"""Where a data directory keeps its stores: an upgrade must find what the last version wrote.

`$BMO_GLOBAL_DATA/events.db` (the event store) and `read_models.db` (the read models, which
can be rebuilt) are on-disk names an existing deployment depends on (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.events.select import open_event_store
from app.events.store import EventStore
from app.projections.db import open_read_db, read_db_path
from tests.core.helpers import fire


def test_the_event_store_of_a_data_dir_is_its_events_db(tmp_path: Path) -> None:
    earlier = EventStore(tmp_path / "events.db")  # what an earlier version wrote
    run_id = fire(earlier)
    earlier.close()
    store = open_event_store(tmp_path)
    assert [type(e).__name__ for e in store.stream(run_id)] == ["Fired"]
    store.close()


def test_a_missing_data_dir_is_created_with_its_parents(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    store = open_event_store(data)
    fire(store)
    store.close()
    assert (data / "events.db").is_file()
    read = open_read_db(read_db_path(tmp_path / "c" / "d"))
    read.close()
    assert (tmp_path / "c" / "d" / "read_models.db").is_file()


def test_the_fault_seam_wraps_the_same_events_db(tmp_path: Path) -> None:
    earlier = EventStore(tmp_path / "events.db")
    run_id = fire(earlier)
    earlier.close()
    switch = tmp_path / "faults-on"
    store = open_event_store(tmp_path, switch)
    assert [type(e).__name__ for e in store.stream(run_id)] == ["Fired"]
    fire(store)  # no switch file: saves go through
    switch.touch()
    with pytest.raises(Exception, match="injected append fault"):
        fire(store)
    switch.unlink()
    fire(store)
    store.close()
