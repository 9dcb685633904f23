"""`bmo runs list` and `bmo runs events ID [--follow]`: the ledger from the CLI."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from app.agent.approval import display_arguments
from app.cli.ledger import open_ledger
from app.config import ConfigError, data_dir, load_settings
from app.projections import runs

__all__ = ["events", "format_run", "list_runs"]


def _capacity() -> int:
    try:
        return load_settings(cwd=Path.cwd(), env=dict(os.environ)).options.openai_compat.ledger_capacity
    except ConfigError:
        return 10_000


def format_run(row: dict[str, Any]) -> str:
    elapsed = f"{row['elapsed_ms']:.1f} ms" if row["elapsed_ms"] is not None else "running"
    session = row["session_id"] or "-"
    return (
        f"{row['started_at'][:19]}  {row['request_id'][:12]}  {row['route']:<16} "
        f"{row['outcome'] or '(open)':<24} {row['status_code'] or '':>3}  {elapsed:>11}  "
        f"{row['model'] or '-':<20} session={session}"
    )


def list_runs(
    *,
    limit: Annotated[int, Parameter(help="How many runs (newest first).")] = 20,
    outcome: Annotated[str | None, Parameter(help="Only this outcome, e.g. final_answer, queued.")] = None,
    session: Annotated[str | None, Parameter(help="Only this session id.")] = None,
    route: Annotated[str | None, Parameter(help="Only this route, e.g. chat_completions.")] = None,
    json_output: Annotated[bool, Parameter(name="--json", help="One JSON object per line.")] = False,
) -> int:
    """Recent runs from the ledger (works with no server running)."""
    try:
        conn = open_ledger(data_dir(dict(os.environ)), _capacity())
    except FileNotFoundError as exc:
        print(f"bmo runs: {exc}", file=sys.stderr)
        return 1
    filters = {k: v for k, v in {"outcome": outcome, "session_id": session, "route": route}.items() if v}
    rows, _ = runs.list_runs(conn, limit=max(1, limit), filters=filters)
    for row in rows:
        row.pop("seq", None)
        print(json.dumps(row) if json_output else format_run(row))
    return 0


def _for_terminal(event: dict[str, Any]) -> dict[str, Any]:
    """A permission question also as a terminal shows it safely: complete, invisibles escaped."""
    data = event.get("data") or {}
    if event.get("type") == "PermissionAsked" and isinstance(data.get("arguments"), str):
        event = {**event, "data": {**data, "arguments_display": display_arguments(data["arguments"])}}
    return event


def events(
    run_id: str,
    *,
    follow: Annotated[bool, Parameter(help="Keep printing new events until the run ends.")] = False,
) -> int:
    """A run's event timeline, oldest first, one JSON object per line."""
    request_id = run_id.replace("-", "").lower()
    data = data_dir(dict(os.environ))
    capacity = _capacity()
    version = 0
    while True:
        try:
            conn = open_ledger(data, capacity)
        except FileNotFoundError as exc:
            print(f"bmo runs: {exc}", file=sys.stderr)
            return 1
        if version == 0 and runs.get_run(conn, request_id) is None:
            print(f"bmo runs: no run '{run_id}' in the ledger", file=sys.stderr)
            return 1
        for event in runs.run_events(conn, request_id, after_version=version):
            version = event["version"]
            print(json.dumps(_for_terminal(event)), flush=True)
            if event["type"] == "Finished":
                return 0
        conn.close()
        if not follow:
            return 0
        time.sleep(0.3)
