"""Per-route request counts and User-Agent counts."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import DomainEvent

from app.events.run import Fired
from app.projections.rows import Increment, RowOp

__all__ = ["COUNTS_SCHEMA", "project", "route_counts", "top_user_agents"]

COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS openai_compat_route_counts (
    route TEXT PRIMARY KEY, count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS openai_compat_user_agents (
    user_agent TEXT PRIMARY KEY, count INTEGER NOT NULL
);
"""


def project(event: DomainEvent, position: int) -> list[RowOp]:
    if not isinstance(event, Fired):
        return []
    return [
        Increment("openai_compat_route_counts", ("route", event.route)),
        Increment("openai_compat_user_agents", ("user_agent", event.client_ua)),
    ]


def route_counts(conn: Any) -> dict[str, int]:
    rows = conn.execute("SELECT route, count FROM openai_compat_route_counts ORDER BY route")
    return dict(rows.fetchall())


def top_user_agents(conn: Any, n: int = 5) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT user_agent, count FROM openai_compat_user_agents ORDER BY count DESC, user_agent LIMIT ?",
        (n,),
    )
    return [{"user_agent": ua, "count": c} for ua, c in rows]
