"""Permission questions: pending ones for `GET /v1/permissions`, the TUI and the review page."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import DomainEvent

from app.events.run import Finished, PermissionAsked, PermissionDecided
from app.projections.rows import Insert, RowOp, UpdateWhere

__all__ = ["PERMISSIONS_SCHEMA", "add_missing_columns", "get_question", "pending_questions", "project"]

PERMISSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS permission_questions (
    question_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    call_id TEXT NOT NULL,
    arguments TEXT NOT NULL,
    asked_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    requester TEXT,
    decided_at TEXT,
    digest TEXT,
    session_id TEXT,
    asked_by TEXT,
    decided_via TEXT,
    scope TEXT
);
CREATE INDEX IF NOT EXISTS permission_status ON permission_questions (status, asked_at);
"""

# columns added after the first release: an existing read DB gains them (NULL for old rows)
_LATER_COLUMNS = ("digest", "session_id", "asked_by", "decided_via", "scope")

_COLUMNS = (
    "question_id, request_id, tool, call_id, arguments, asked_at, expires_at, status, "
    "decided_by, requester, decided_at, digest, session_id, asked_by, decided_via, scope"
)


def add_missing_columns(conn: Any) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(permission_questions)")}
    for column in _LATER_COLUMNS:
        if column not in have:
            conn.execute(f"ALTER TABLE permission_questions ADD COLUMN {column} TEXT")


def project(event: DomainEvent, position: int) -> list[RowOp]:
    """Only three kinds of event touch a question: the rest return before any work."""
    match event:
        case PermissionAsked():
            row = {
                "question_id": event.question_id,
                "request_id": event.originator_id.hex,
                "tool": event.tool,
                "call_id": event.call_id,
                "arguments": event.arguments,
                "asked_at": event.timestamp.isoformat(),
                "expires_at": event.expires_at,
                "status": "pending",
                "digest": event.digest,
                "session_id": event.session_id,
                "asked_by": event.requester,
            }
            return [Insert("permission_questions", row)]
        case PermissionDecided():
            values = {
                "status": "allowed" if event.decision == "allow" else "denied",
                "decided_by": event.decided_by,
                "requester": event.requester,
                "decided_at": event.timestamp.isoformat(),
                "decided_via": event.decided_via,
                "scope": event.scope,
            }
            return [UpdateWhere("permission_questions", (("question_id", event.question_id),), values)]
        case Finished():  # a question cannot outlive its run
            where = (("request_id", event.originator_id.hex), ("status", "pending"))
            closed = {"status": "closed", "decided_at": event.timestamp.isoformat()}
            return [UpdateWhere("permission_questions", where, closed)]
    return []


def pending_questions(conn: Any) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM permission_questions WHERE status = 'pending' ORDER BY asked_at"
    )
    return [dict(r) for r in rows]


def get_question(conn: Any, question_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM permission_questions WHERE question_id = ?", (question_id,)
    ).fetchone()
    return dict(row) if row else None
