"""Permission questions: pending ones for `GET /v1/permissions` and the TUI."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import DomainEvent

from app.events.run import Finished, PermissionAsked, PermissionDecided
from app.projections.rows import Insert, RowOp, UpdateWhere

__all__ = ["PERMISSIONS_SCHEMA", "get_question", "pending_questions", "project"]

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
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS permission_status ON permission_questions (status, asked_at);
"""

_COLUMNS = (
    "question_id, request_id, tool, call_id, arguments, asked_at, expires_at, status, "
    "decided_by, requester, decided_at"
)


def project(event: DomainEvent, position: int) -> list[RowOp]:
    request_id = event.originator_id.hex
    at = event.timestamp.isoformat()
    match event:
        case PermissionAsked():
            row = {
                "question_id": event.question_id,
                "request_id": request_id,
                "tool": event.tool,
                "call_id": event.call_id,
                "arguments": event.arguments,
                "asked_at": at,
                "expires_at": event.expires_at,
                "status": "pending",
            }
            return [Insert("permission_questions", row)]
        case PermissionDecided():
            values = {
                "status": "allowed" if event.decision == "allow" else "denied",
                "decided_by": event.decided_by,
                "requester": event.requester,
                "decided_at": at,
            }
            return [UpdateWhere("permission_questions", (("question_id", event.question_id),), values)]
        case Finished():  # a question cannot outlive its run
            where = (("request_id", request_id), ("status", "pending"))
            return [UpdateWhere("permission_questions", where, {"status": "closed", "decided_at": at})]
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
