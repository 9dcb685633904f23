"""`bmo logs`: the "did Open WebUI hit bmo, and what happened?" recipes without jq."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

from cyclopts import Parameter

from app.cli.runs import check_choice
from app.config import data_dir
from app.projections.runs import OPERATOR_ROUTES, OUTCOMES
from app.telemetry import log_path

__all__ = ["Filters", "format_record", "logs", "matches", "request_ids_like"]

UA_MEMORY = 10_000  # request ids whose client (User-Agent) --pretty remembers for outcome lines


class Filters:
    def __init__(
        self,
        msg: str | None,
        outcome: str | None,
        request_id: str | None,
        session_id: str | None,
        everything: bool = False,
    ) -> None:
        self.msg, self.outcome, self.request_id, self.session_id = msg, outcome, request_id, session_id
        self.everything = everything  # operator reads too (a request asked for by id always shows)


def matches(record: dict[str, Any], f: Filters) -> bool:
    """Pure: does a record pass every given filter (`--msg` matches a prefix)."""
    if not (f.everything or f.request_id) and record.get("route") in OPERATOR_ROUTES:
        return False
    if f.msg and not str(record.get("msg", "")).startswith(f.msg):
        return False
    if f.outcome and record.get("outcome") != f.outcome:
        return False
    if f.request_id and record.get("request_id") != f.request_id:
        return False
    return not (f.session_id and record.get("session_id") != f.session_id)


def request_ids_like(records: Iterator[dict[str, Any]], prefix: str) -> list[str]:
    """Distinct request ids in the log that start with `prefix`, in order of appearance."""
    found: dict[str, None] = {}
    for record in records:
        rid = str(record.get("request_id") or "")
        if rid.startswith(prefix):
            found[rid] = None
    return list(found)


def format_record(record: dict[str, Any]) -> str:
    what = record.get("outcome") or record.get("route", "")
    extra = f" route={record['route']}" if record.get("outcome") and record.get("route") else ""
    extra += f" status={record['status_code']}" if "status_code" in record else ""
    extra += f" {record['elapsed_ms']:.1f}ms" if isinstance(record.get("elapsed_ms"), int | float) else ""
    extra += f" error={record['error']!r}" if record.get("error") else ""
    return (
        f"{str(record.get('time', ''))[:23]:<23} {record.get('level', ''):<4} {record.get('msg', ''):<34} "
        f"{str(record.get('request_id', ''))[:12]:<12} {what:<24} session={record.get('session_id') or '-'}"
        f" ua={str(record.get('client_ua', ''))[:40]!r}{extra}"
    )


def _records(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line while a server writes: skip, never crash
        if isinstance(record, dict):
            yield record


class _Clients:
    """Outcome records carry no User-Agent: --pretty takes it from the request's fired record."""

    def __init__(self) -> None:
        self._ua: dict[str, str] = {}

    def note(self, record: dict[str, Any]) -> dict[str, Any]:
        rid = str(record.get("request_id") or "")
        if "client_ua" in record:
            if len(self._ua) >= UA_MEMORY:
                self._ua.pop(next(iter(self._ua)))
            self._ua[rid] = str(record["client_ua"])
        elif rid in self._ua:
            record = {**record, "client_ua": self._ua[rid]}
        return record


def _follow(handle: IO[str]) -> Iterator[str]:
    while True:
        line = handle.readline()
        if line:
            yield line
        else:
            time.sleep(0.2)


def logs(
    *,
    tail: Annotated[int, Parameter(help="Only the last N matching records (0 = all).")] = 0,
    msg: Annotated[str | None, Parameter(help="Record name prefix, e.g. openai_compat.action.")] = None,
    outcome: Annotated[str | None, Parameter(help=f"Only this outcome ({', '.join(OUTCOMES)}).")] = None,
    request_id: Annotated[
        str | None,
        Parameter(help="One request (X-Request-Id), or a unique prefix (e.g. the 12 characters shown)."),
    ] = None,
    session_id: Annotated[
        str | None,
        Parameter(name=["--session-id", "--session"], help="One session (X-BMO-Session-Id)."),
    ] = None,
    all_traffic: Annotated[
        bool,
        Parameter(
            name="--all",
            help="Include operator reads (posture, runs, run events, permissions); "
            "by default only client traffic is shown.",
        ),
    ] = False,
    follow: Annotated[bool, Parameter(help="Keep printing new matching records.")] = False,
    pretty: Annotated[bool, Parameter(help="A human table instead of JSON lines.")] = False,
) -> int:
    """Matching records from $BMO_GLOBAL_DATA/logs/bmo.jsonl (JSON lines, so `| jq` works)."""
    problem = check_choice("--outcome", outcome, OUTCOMES)
    if problem:
        print(f"bmo logs: {problem}", file=sys.stderr)
        return 2
    path = log_path(data_dir(dict(os.environ)))
    if not path.exists():
        print(f"bmo logs: no log file at {path} yet", file=sys.stderr)
        return 1
    if request_id:
        request_id = _full_request_id(path, request_id, follow=follow)
        if request_id is None:
            return 1
    f = Filters(msg, outcome, request_id, session_id, everything=all_traffic)
    enrich = _Clients().note if pretty else (lambda r: r)  # JSON lines stay the records as written
    show = format_record if pretty else (lambda r: json.dumps(r, ensure_ascii=False))
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        selected = (r for r in (enrich(r) for r in _records(handle)) if matches(r, f))
        for record in deque(selected, maxlen=tail) if tail > 0 else selected:
            print(show(record), flush=True)
        if follow:
            for record in (enrich(r) for r in _records(_follow(handle))):
                if matches(record, f):
                    print(show(record), flush=True)
    return 0


def _full_request_id(path: Path, ref: str, *, follow: bool) -> str | None:
    """The one request id in the log that `ref` starts with; None (and a message) otherwise."""
    wanted = ref.replace("-", "").lower()
    with path.open(encoding="utf-8", errors="replace") as handle:
        found = request_ids_like(_records(handle), wanted)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        shown = ", ".join(rid[:12] for rid in found[:10]) + (" ..." if len(found) > 10 else "")
        print(f"bmo logs: request id prefix '{ref}' is ambiguous: it matches {shown}", file=sys.stderr)
        return None
    if follow and len(wanted) == 32:
        return wanted  # not logged yet: wait for it
    print(f"bmo logs: no request '{ref}' in {path}", file=sys.stderr)
    return None
