"""`bmo runs list` and `bmo runs events ID [--follow]`: the ledger from the CLI."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from app.agent.approval import display_arguments
from app.cli.ledger import open_ledger
from app.config import ConfigError, data_dir, load_settings
from app.projections import runs

__all__ = ["HEADER", "check_choice", "events", "format_run", "list_runs", "resolve_run_id"]

# started, id, route, task, client, session, model, outcome, status, elapsed
_COLUMNS = "{:<19}  {:<12}  {:<16} {:<20} {:<24} {:<20} {:<20} {:<24} {:>3}  {:>11}"
HEADER = _COLUMNS.format(
    "STARTED", "ID", "ROUTE", "TASK", "CLIENT", "SESSION", "MODEL", "OUTCOME", "ST", "ELAPSED"
)


def _capacity() -> int:
    try:
        return load_settings(cwd=Path.cwd(), env=dict(os.environ)).options.openai_compat.ledger_capacity
    except ConfigError:
        return 10_000


def _cell(text: str, width: int) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def format_run(row: dict[str, Any]) -> str:
    """One ledger row: which client asked what (task), in which chat (session), and how it ended."""
    elapsed = f"{row['elapsed_ms']:.1f} ms" if row["elapsed_ms"] is not None else "running"
    return _COLUMNS.format(
        row["started_at"][:19],
        row["request_id"][:12],
        _cell(row["route"], 16),
        _cell(row.get("task") or ("chat" if row["route"] == "chat_completions" else ""), 20),
        _cell(row.get("client_ua", ""), 24),
        _cell(row["session_id"], 20),
        _cell(row["model"], 20),
        _cell(row["outcome"] or "(open)", 24),
        row["status_code"] or "",
        elapsed,
    )


def check_choice(option: str, value: str | None, accepted: Sequence[str]) -> str | None:
    """None when `value` is accepted (or not given), else the error message naming the accepted list."""
    if value is None or value in accepted:
        return None
    return f"unknown {option} {value!r} (accepted: {', '.join(accepted)})"


def resolve_run_id(conn: Any, ref: str) -> str:
    """A full request id from a full id or a unique prefix (the 12 characters the tools print).

    LookupError when nothing matches; runs.AmbiguousId names the candidates.
    """
    wanted = ref.replace("-", "").lower()
    if len(wanted) == 32 and runs.get_run(conn, wanted) is not None:
        return wanted
    found = runs.find_request_ids(conn, wanted)
    if len(found) == 1:
        return found[0]
    if found:
        raise runs.AmbiguousId(ref, found)
    raise LookupError(f"no run '{ref}' in the ledger")


def list_runs(
    *,
    limit: Annotated[int, Parameter(help="How many runs (newest first).")] = 20,
    outcome: Annotated[str | None, Parameter(help=f"Only this outcome ({', '.join(runs.OUTCOMES)}).")] = None,
    session: Annotated[
        str | None, Parameter(name=["--session", "--session-id"], help="Only this session id.")
    ] = None,
    route: Annotated[str | None, Parameter(help=f"Only this route ({', '.join(runs.ROUTES)}).")] = None,
    all_traffic: Annotated[
        bool,
        Parameter(
            name="--all",
            help="Include operator reads (posture, runs, run events, permissions); "
            "by default only client traffic is listed.",
        ),
    ] = False,
    json_output: Annotated[bool, Parameter(name="--json", help="One JSON object per line.")] = False,
) -> int:
    """Recent runs from the ledger, with a header (works with no server running)."""
    for problem in (
        check_choice("--outcome", outcome, runs.OUTCOMES),
        check_choice("--route", route, runs.ROUTES),
    ):
        if problem:
            print(f"bmo runs: {problem}", file=sys.stderr)
            return 2
    try:
        conn = open_ledger(data_dir(dict(os.environ)), _capacity())
    except FileNotFoundError as exc:
        print(f"bmo runs: {exc}", file=sys.stderr)
        return 1
    filters = {k: v for k, v in {"outcome": outcome, "session_id": session, "route": route}.items() if v}
    traffic = "all" if all_traffic or route in runs.OPERATOR_ROUTES else "client"
    rows, _ = runs.list_runs(conn, limit=max(1, limit), filters=filters, traffic=traffic)
    if not json_output:
        print(HEADER)
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
    run_id: Annotated[
        str, Parameter(help="A request id, or a unique prefix (e.g. the 12 characters shown).")
    ],
    *,
    follow: Annotated[bool, Parameter(help="Keep printing new events until the run ends.")] = False,
) -> int:
    """A run's event timeline, oldest first, one JSON object per line."""
    data = data_dir(dict(os.environ))
    capacity = _capacity()
    version = 0
    request_id = ""
    while True:
        try:
            conn = open_ledger(data, capacity)
        except FileNotFoundError as exc:
            print(f"bmo runs: {exc}", file=sys.stderr)
            return 1
        if not request_id:
            try:
                request_id = resolve_run_id(conn, run_id)
            except LookupError as exc:
                print(f"bmo runs: {exc}", file=sys.stderr)
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
