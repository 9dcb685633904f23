"""The projector's SQLite shortcuts select the same rows as the plain statements they replace.

`runs.prune` finds the ledger's cutoff from the oldest end after a `count(*)`;
`runs.prune_sql` (still used on PostgreSQL) walks from the newest end. Over
random ledgers (open and ended runs, capacities below, at and above the size)
both must leave exactly the same rows in both tables.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.projections import runs
from app.projections.db import open_read_db

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
