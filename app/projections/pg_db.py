"""The read models on PostgreSQL, beside the events, for every instance to serve.

The read models' SQL (projections/runs.py, counts.py, permissions.py) is written
for SQLite with `?` placeholders; `PgReadConn` runs the same statements here
(placeholders translated, rows that behave like `sqlite3.Row`), so the query
functions and their callers do not know which store is behind them. Row
operations get their PostgreSQL spelling in `apply_pg_ops`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import psycopg

from app.events.postgres_store import CONNECTION_TIMEOUTS
from app.projections.counts import COUNTS_SCHEMA
from app.projections.permissions import PERMISSIONS_SCHEMA
from app.projections.rows import Increment, Insert, RowOp, Update, UpdateWhere
from app.projections.runs import RUNS_SCHEMA

__all__ = [
    "PROJECTED_CHANNEL",
    "PgReadConn",
    "Row",
    "apply_pg_ops",
    "ensure_schema",
    "pg_schema",
    "reset_pg_read_models",
    "translate",
]

RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0  # a read connection's retries while the server is away
PROJECTED_CHANNEL = "bmo_projected"  # NOTIFYd with the new position by each projector step
TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY, position BIGINT NOT NULL
);
"""
_TABLES = (
    "openai_compat_runs",
    "openai_compat_run_events",
    "openai_compat_route_counts",
    "openai_compat_user_agents",
    "permission_questions",
    "projection_tracking",
)


def pg_schema() -> str:
    """The SQLite schema in PostgreSQL types (ids and positions are 64-bit; floats double)."""
    text = RUNS_SCHEMA + COUNTS_SCHEMA + PERMISSIONS_SCHEMA
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)
    return text + TRACKING_SCHEMA


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by index, by column name, or as a mapping (`dict(row)`)."""

    _names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _row_factory(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())
    return lambda values: Row(names, values)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (literal `%` escaped first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _param(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # flags are integer columns, as in SQLite


class PgReadConn:
    """A sqlite3-shaped connection: `execute(sql, params)` returns an iterable cursor.

    Autocommit, one statement at a time (reads); reconnects once if the server
    restarted under it. Its callers read on the event loop's thread, so while the
    server is away it must not make every read wait for a connection attempt: after
    a failed one it fails at once (the same error) until a retry is due, backing off
    from 0.5 s to 5 s, and libpq's own waits are cut to seconds (`CONNECTION_TIMEOUTS`).
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._clock = clock
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        self._last_error = ""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        for attempt in (1, 2):
            conn = self.connection()
            try:
                return conn.execute(translate(sql), [_param(p) for p in params])
            except psycopg.OperationalError:
                if attempt == 2 or not (conn.closed or conn.broken):
                    raise
                self._conn = None
        raise AssertionError("unreachable")

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> psycopg.Connection[Any]:
        now = self._clock()
        if now < self._retry_at:
            raise psycopg.OperationalError(f"the store is unreachable ({self._last_error})")
        try:
            conn = psycopg.connect(
                self._url, autocommit=True, row_factory=_row_factory, **CONNECTION_TIMEOUTS
            )
        except psycopg.OperationalError as exc:
            self._last_error = str(exc).strip() or type(exc).__name__
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)
            raise
        self._backoff = RETRY_MIN_S
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def ensure_schema(url: str) -> None:
    """Create the read-model tables once (instances starting together take turns)."""
    from app.events.postgres_store import schema_lock

    with schema_lock(url), psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(pg_schema())


def reset_pg_read_models(url: str) -> None:
    """Drop every read model; the projector rebuilds them from position 0."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS " + ", ".join(_TABLES))


def apply_pg_ops(cur: Any, ops: list[RowOp]) -> None:
    """Apply inside the caller's transaction (table names are ours, never input)."""
    for op in ops:
        match op:
            case Insert(table, row):
                cur.execute(_insert_sql(table, tuple(row)), [_param(v) for v in row.values()])
            case Update(table, (key_col, key), values):
                sql = _update_sql(table, tuple(values), (key_col,))
                cur.execute(sql, [*(_param(v) for v in values.values()), key])
            case UpdateWhere(table, where, values):
                sql = _update_sql(table, tuple(values), tuple(c for c, _ in where))
                cur.execute(sql, [*(_param(v) for v in values.values()), *(v for _, v in where)])
            case Increment(table, (key_col, key), column):
                cur.execute(_increment_sql(table, key_col, column), (key,))


@lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("%s" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"


@lru_cache(maxsize=256)
def _update_sql(table: str, columns: tuple[str, ...], where: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = %s" for c in columns)
    conds = " AND ".join(f"{c} = %s" for c in where)
    return f"UPDATE {table} SET {sets} WHERE {conds}"


@lru_cache(maxsize=64)
def _increment_sql(table: str, key_col: str, column: str) -> str:
    return (
        f"INSERT INTO {table} ({key_col}, {column}) VALUES (%s, 1) "
        f"ON CONFLICT ({key_col}) DO UPDATE SET {column} = {table}.{column} + 1"
    )
