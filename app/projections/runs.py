"""The run ledger: `openai_compat_runs` and `openai_compat_run_events`.

`project` is pure (event in, row operations out); the queries below are the
only way GET handlers, the CLI and the TUI read the ledger.
"""

from __future__ import annotations

import json
from dataclasses import fields
from functools import lru_cache
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEvent

from app.events.run import Finished, Fired, ModelCalled
from app.outcomes import OUTCOMES
from app.projections.rows import Insert, RowOp, Update

__all__ = [
    "OPERATOR_ROUTES",
    "OUTCOMES",
    "ROUTES",
    "RUNS_SCHEMA",
    "TRAFFIC",
    "AmbiguousId",
    "event_data",
    "find_request_ids",
    "get_run",
    "list_runs",
    "open_request_ids",
    "project",
    "prune",
    "prune_sql",
    "recent_outcomes",
    "run_count",
    "run_events",
    "session_streams",
]

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS openai_compat_runs (
    request_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    stream INTEGER NOT NULL,
    tool_policy TEXT NOT NULL,
    ambiguity_action TEXT NOT NULL,
    is_session_reuse INTEGER NOT NULL,
    client_ua TEXT NOT NULL,
    requester TEXT NOT NULL,
    task TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    ended_seq INTEGER,
    elapsed_ms REAL,
    outcome TEXT,
    status_code INTEGER,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_seq ON openai_compat_runs (seq);
CREATE INDEX IF NOT EXISTS runs_ended_seq ON openai_compat_runs (ended_seq);
CREATE TABLE IF NOT EXISTS openai_compat_run_events (
    request_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (request_id, version)
);
"""

# The ledger's vocabulary: filters are checked against it, so a typo is an error, not an empty answer.
ROUTES = (
    "chat_completions",
    "models_list",
    "posture",
    "runs_list",
    "run_events_list",
    "permissions",
    "unmatched",
)
OPERATOR_ROUTES = ("posture", "runs_list", "run_events_list", "permissions")  # an operator's own reads
TRAFFIC = ("all", "client", "operator")  # client = every route but OPERATOR_ROUTES

_IDENTITY = {"originator_id", "originator_version", "timestamp"}
_encode = msgspec.json.Encoder().encode


def event_data(event: DomainEvent) -> dict[str, Any]:
    """The event's own fields (identity fields are columns of their own)."""
    return {name: getattr(event, name) for name in _own_fields(type(event))}


@lru_cache(maxsize=128)
def _own_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in _IDENTITY)


def project(event: DomainEvent, position: int) -> list[RowOp]:
    """Every event goes to the timeline; `Fired` opens a run row and `Finished` closes it."""
    request_id = event.originator_id.hex
    at = event.timestamp.isoformat()
    data = event_data(event)
    ops: list[RowOp] = [
        Insert(
            "openai_compat_run_events",
            {
                "request_id": request_id,
                "version": event.originator_version,
                "seq": position,
                "type": type(event).__name__,
                "at": at,
                "data": _encode(data).decode(),
            },
        )
    ]
    match event:
        case Fired():
            row = {"request_id": request_id, "seq": position, "started_at": at}
            row.update(data)
            ops.append(Insert("openai_compat_runs", row))
        case ModelCalled():
            pass  # usage is totalled on Finished
        case Finished():
            ops.append(
                Update(
                    "openai_compat_runs",
                    ("request_id", request_id),
                    {
                        "ended_at": at,
                        "ended_seq": position,
                        "elapsed_ms": event.elapsed_ms,
                        "outcome": event.outcome,
                        "status_code": event.status_code,
                        "error": event.error,
                        "prompt_tokens": event.prompt_tokens,
                        "completion_tokens": event.completion_tokens,
                    },
                )
            )
    return ops


_RUN_COLUMNS = (
    "request_id, session_id, route, model, stream, tool_policy, ambiguity_action, "
    "is_session_reuse, client_ua, requester, task, started_at, ended_at, elapsed_ms, "
    "outcome, status_code, error, prompt_tokens, completion_tokens, seq"
)
_BOOLS = ("stream", "is_session_reuse")


def _run_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for name in _BOOLS:
        out[name] = bool(out[name])
    return out


def list_runs(
    conn: Any,
    *,
    limit: int = 50,
    before_seq: int | None = None,
    filters: dict[str, str] | None = None,
    traffic: str = "all",
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns rows and the cursor (a seq) of the next page.

    `traffic` "client" leaves out an operator's own reads (posture, ledger,
    timelines, permissions), which a polling TUI would otherwise crowd in.
    """
    where: list[str] = []
    params: list[Any] = []
    if before_seq is not None:
        where.append("seq < ?")
        params.append(before_seq)
    if traffic != "all":
        marks = ", ".join("?" * len(OPERATOR_ROUTES))
        where.append(f"route {'NOT IN' if traffic == 'client' else 'IN'} ({marks})")
        params.extend(OPERATOR_ROUTES)
    for column, value in (filters or {}).items():
        where.append(f"{column} = ?")
        params.append(value)
    sql = f"SELECT {_RUN_COLUMNS} FROM openai_compat_runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT ?"
    rows = [_run_row(r) for r in conn.execute(sql, (*params, limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["seq"] if more and rows else None)


def get_run(conn: Any, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM openai_compat_runs WHERE request_id = ?", (request_id,)
    ).fetchone()
    return _run_row(row) if row is not None else None


class AmbiguousId(LookupError):
    """An id prefix that names more than one run; `candidates` lists them."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(c[:12] for c in candidates[:10]) + (" ..." if len(candidates) > 10 else "")
        super().__init__(f"id prefix '{prefix}' is ambiguous: it matches {shown}")
        self.candidates = candidates


def find_request_ids(conn: Any, prefix: str, limit: int = 11) -> list[str]:
    """Request ids starting with `prefix` (dashes and case ignored), at most `limit`."""
    wanted = prefix.replace("-", "").lower()
    if not wanted or any(c not in "0123456789abcdef" for c in wanted):
        return []
    rows = conn.execute(
        "SELECT request_id FROM openai_compat_runs WHERE request_id >= ? AND request_id < ? "
        "ORDER BY request_id LIMIT ?",
        (wanted, wanted + "g", limit),
    )
    return [r[0] for r in rows]


def run_events(conn: Any, request_id: str, after_version: int = 0) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT version, seq, type, at, data FROM openai_compat_run_events "
        "WHERE request_id = ? AND version > ? ORDER BY version",
        (request_id, after_version),
    )
    return [{"version": v, "seq": s, "type": t, "at": at, "data": json.loads(d)} for v, s, t, at, d in rows]


def open_request_ids(conn: Any) -> list[str]:
    """Runs with no terminal event yet, oldest first (the ledger never prunes an open run)."""
    rows = conn.execute("SELECT request_id FROM openai_compat_runs WHERE ended_seq IS NULL ORDER BY seq")
    return [r[0] for r in rows]


def session_streams(conn: Any) -> list[UUID]:
    """Every session stream, from its `SessionOpened` in the event timeline.

    The timeline holds every stream's events; a session's are never pruned (only
    the events of a pruned run go), so this lists every session ever opened.
    """
    rows = conn.execute(
        "SELECT DISTINCT request_id FROM openai_compat_run_events WHERE type = 'SessionOpened' "
        "ORDER BY request_id"
    )
    return [UUID(hex=r[0]) for r in rows]


def run_count(conn: Any) -> int:
    count: int = conn.execute("SELECT count(*) FROM openai_compat_runs").fetchone()[0]
    return count


def recent_outcomes(conn: Any, n: int = 5) -> list[dict[str, Any]]:
    """The last terminal outcomes of client traffic (an operator's own polling would crowd them out)."""
    marks = ", ".join("?" * len(OPERATOR_ROUTES))
    rows = conn.execute(
        "SELECT request_id, elapsed_ms, outcome FROM openai_compat_runs "
        f"WHERE ended_seq IS NOT NULL AND route NOT IN ({marks}) ORDER BY ended_seq DESC LIMIT ?",
        (*OPERATOR_ROUTES, n),
    )
    return [{"request_id": r, "elapsed_ms": e, "outcome": o} for r, e, o in rows]


def prune(conn: Any, capacity: int) -> None:
    """Delete what `prune_sql` deletes, finding the cutoff without walking the whole ledger.

    `prune_sql`'s cutoff (`ORDER BY seq DESC ... OFFSET capacity`) steps through
    `capacity` index entries twice a step: ~100 µs once the ledger is full, at every
    projector step. `count(*)` reads page headers only, and the same cutoff counted
    from the oldest end is a short walk (the runs beyond capacity: the ones this step
    added and the open runs that are never pruned). SQLite only (PostgreSQL keeps `prune_sql`).
    """
    count: int = conn.execute("SELECT count(*) FROM openai_compat_runs").fetchone()[0]
    if count <= capacity:  # prune_sql's cutoff is NULL then: nothing goes
        return
    cutoff = conn.execute(
        "SELECT seq FROM openai_compat_runs ORDER BY seq LIMIT 1 OFFSET ?", (count - capacity - 1,)
    ).fetchone()[0]
    prunable = "ended_seq IS NOT NULL AND seq <= ?"
    conn.execute(
        "DELETE FROM openai_compat_run_events WHERE request_id IN "
        f"(SELECT request_id FROM openai_compat_runs WHERE {prunable})",
        (cutoff,),
    )
    conn.execute(f"DELETE FROM openai_compat_runs WHERE {prunable}", (cutoff,))


def prune_sql(capacity: int) -> list[tuple[str, tuple[int, ...]]]:
    """Statements that keep the newest `capacity` runs, and every open run (events of pruned runs go too).

    An open run is never pruned: the startup sweep finds interrupted runs in
    this table, so a run pruned while open would stay open (and its session
    busy) forever. It is pruned by the first step after it ends.
    """
    cutoff = "(SELECT seq FROM openai_compat_runs ORDER BY seq DESC LIMIT 1 OFFSET ?)"
    prunable = f"ended_seq IS NOT NULL AND seq <= {cutoff}"
    return [
        (
            "DELETE FROM openai_compat_run_events WHERE request_id IN "
            f"(SELECT request_id FROM openai_compat_runs WHERE {prunable})",
            (capacity,),
        ),
        (f"DELETE FROM openai_compat_runs WHERE {prunable}", (capacity,)),
    ]
