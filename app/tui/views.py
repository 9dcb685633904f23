"""Pure text rendering for the TUI: dicts from the HTTP API in, lines out.

Nothing here touches urwid, the network or a clock, so every screen can be
asserted on as plain strings. The posture report renders the same read model
as `GET /v1/openai-compat/posture` and `bmo config show-run-ledger`.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.agent.approval import display_arguments
from app.projections.posture import label

__all__ = [
    "DEGRADED_WARNING",
    "Segment",
    "answer_segments",
    "clip",
    "elapsed_badge",
    "help_lines",
    "ledger_lines",
    "posture_lines",
    "question_lines",
    "runs_lines",
    "settled_length",
    "short_id",
    "sidebar_label",
    "sidebar_lines",
    "status_line",
    "timeline_lines",
]

DEGRADED_WARNING = "!! DEGRADED — persist failures: the ledger is not being written (sticky)"
UNKNOWN_LABEL = "unknown (no posture yet)"
ID_CHARS = 8
UA_CHARS = 56
ARG_CHARS = 120


def short_id(request_id: str | None, n: int = ID_CHARS) -> str:
    """A request id truncated for a narrow column (`157dede7…`)."""
    rid = request_id or "-"
    return rid if len(rid) <= n else rid[:n] + "…"


def elapsed_badge(ms: float | None) -> str:
    """The elapsed-ms badge: `[  1654 ms]`, `[running]` while a run is open."""
    if ms is None:
        return f"[{'running':>9}]"
    return f"[{ms:>6.0f} ms]"


def clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def sidebar_label(posture: Mapping[str, Any] | None) -> str:
    """One of the four SPEC §12 labels (degraded overrides the policy label)."""
    if not posture:
        return UNKNOWN_LABEL
    ledger = posture.get("ledger") or {}
    return label(
        enabled=bool(posture.get("enabled")),
        tool_policy=str(posture.get("tool_policy", "")),
        degraded=bool(ledger.get("degraded")),
    )


def sidebar_lines(
    posture: Mapping[str, Any] | None,
    *,
    server: str,
    session_id: str,
    pending: int,
    activity: str,
) -> list[str]:
    """The wide-terminal sidebar, one fact per line."""
    lines = [f"OpenAI compat: {sidebar_label(posture)}", ""]
    if posture:
        ledger = posture.get("ledger") or {}
        lines.append(f"ledger: {ledger.get('runs', 0)}/{ledger.get('capacity', 0)} runs")
    lines += [
        f"questions: {pending} pending" + ("  → /questions" if pending else ""),
        f"status: {activity}",
        "",
        f"server: {server}",
        f"session: {session_id}",
        "",
        "/help  commands and keys",
    ]
    return lines


def status_line(*, pending: int, activity: str, session_id: str) -> str:
    """The second header line of the narrow layout (the sidebar folded up)."""
    questions = f"questions: {pending} pending → /questions" if pending else "questions: 0"
    return f"{activity} · {questions} · session {session_id} · /help"


def posture_lines(posture: Mapping[str, Any]) -> list[str]:
    """The read-only `/openai-compat` report (SPEC §12)."""
    ledger = posture.get("ledger") or {}
    bind = posture.get("bind") or {}
    lines = ["OpenAI compat — live posture (read-only; Esc: back)"]
    if ledger.get("degraded"):
        lines.append(DEGRADED_WARNING)
        if ledger.get("last_persist_error"):
            lines.append(f"   last error: {clip(ledger['last_persist_error'], 70)}")
    lines.append(
        f"enabled: {'yes' if posture.get('enabled') else 'no'}   "
        f"tool_policy: {posture.get('tool_policy', '?')}   "
        f"ambiguity_action: {posture.get('ambiguity_action', '?')}"
    )
    auth = "auth on" if bind.get("auth") else "auth OFF"
    where = "loopback" if bind.get("loopback") else "NOT loopback"
    lines.append(
        f"model_override_policy: {posture.get('model_override_policy', '?')}   "
        f"bind: {bind.get('addr', '?')} ({where}, {auth})"
    )
    models = posture.get("advertised_models") or []
    lines.append(f"advertised models: {', '.join(models) if models else '(none)'}")
    lines.append(f"ledger: {ledger.get('runs', 0)} / {ledger.get('capacity', 0)} runs")
    routes = posture.get("routes") or {}
    pairs = "  ".join(f"{route}={count}" for route, count in sorted(routes.items()))
    lines.append(f"routes: {pairs or '(none yet)'}")
    lines.append("top User-Agents:")
    agents = posture.get("top_user_agents") or []
    lines += [
        f"  {ua.get('count', 0):>6}  {clip(ua.get('user_agent') or '-', UA_CHARS)}" for ua in agents[:5]
    ]
    if not agents:
        lines.append("  (none yet)")
    lines.append("last 5 outcomes:")
    outcomes = posture.get("recent_outcomes") or []
    lines += [
        f"  {short_id(o.get('request_id')):<9}  {elapsed_badge(o.get('elapsed_ms'))}  {o.get('outcome')}"
        for o in outcomes[:5]
    ]
    if not outcomes:
        lines.append("  (none yet)")
    return lines


def ledger_lines(
    posture: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]], *, everything: bool = False
) -> list[str]:
    """The `/run-ledger` view: size, the degraded flag, outcome tally, newest rows."""
    lines = ["Run ledger (read-only; Esc: back)"]
    if posture:
        ledger = posture.get("ledger") or {}
        lines.append(f"size: {ledger.get('runs', 0)} / {ledger.get('capacity', 0)} runs (oldest pruned)")
        if ledger.get("degraded"):
            lines.append(DEGRADED_WARNING)
    tally: dict[str, int] = {}
    for row in rows:
        key = row.get("outcome") or "(open)"
        tally[key] = tally.get(key, 0) + 1
    summary = "  ".join(f"{k}={v}" for k, v in sorted(tally.items()))
    lines.append(f"newest {len(rows)}: {summary or '(empty)'}")
    lines.append(
        "all traffic, operator reads included"
        if everything
        else "client traffic only (/run-ledger all adds operator reads: posture, runs, permissions)"
    )
    lines += runs_lines(rows, show_route=True, numbered=False)
    return lines


def runs_lines(
    rows: Sequence[Mapping[str, Any]], *, show_route: bool = False, numbered: bool = True
) -> list[str]:
    """One line per ledger row, newest first: time, id, (route), outcome, badge, session."""
    out = []
    for i, row in enumerate(rows, start=1):
        started = str(row.get("started_at") or "")[11:19] or "--:--:--"
        parts = [f"{i:>2}" if numbered else "", started, f"{short_id(row.get('request_id')):<9}"]
        if show_route:
            parts.append(f"{row.get('route') or '-':<16}")
        parts.append(f"{row.get('outcome') or '(open)':<16}")
        parts.append(elapsed_badge(row.get("elapsed_ms")))
        if not show_route and row.get("session_id"):
            parts.append(clip(row["session_id"], 16))
        out.append(" ".join(p for p in parts if p))
    return out or ["(no runs yet)"]


def _at(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _event_summary(kind: str, data: Mapping[str, Any]) -> str:
    d = data
    if kind == "Fired":
        return f"{d.get('route')} model={d.get('model') or '-'} stream={d.get('stream')}"
    if kind == "Started":
        return f"{d.get('model')} ({d.get('message_count')} messages)"
    if kind == "ModelCalled":
        tokens = f"{d.get('prompt_tokens', 0)}+{d.get('completion_tokens', 0)} tok"
        return f"step {d.get('step')} {d.get('model')} {tokens} → {d.get('finish_reason') or '-'}"
    if kind == "ToolCalled":
        ok = "ok" if d.get("ok") else "FAILED"
        return f"{d.get('name')} {ok} {float(d.get('duration_ms') or 0):.1f} ms"
    if kind == "ContentAppended":
        return f"{len(str(d.get('text', '')))} chars ({d.get('role') or 'assistant'})"
    if kind == "PermissionAsked":
        return f"{d.get('tool')} {clip(d.get('arguments', ''), 60)}"
    if kind == "PermissionDecided":
        return f"{d.get('decision')} by {d.get('decided_by')}"
    if kind == "Queued":
        return f"position {d.get('position')}"
    if kind == "Finished":
        return f"{d.get('outcome')} {d.get('status_code')} {elapsed_badge(d.get('elapsed_ms'))}"
    if kind == "Cancelled":
        by = f" by {d.get('by')}" if d.get("by") else ""
        return f"{d.get('reason', '')}{by} at step {d.get('step', 0)}"
    if kind == "HistoryDiverged":
        return f"followed the client: kept {d.get('kept')}, dropped {d.get('dropped')}"
    return clip(json.dumps(dict(d), default=str), 60)


def timeline_lines(events: Sequence[Mapping[str, Any]], *, request_id: str = "") -> list[str]:
    """A run's event timeline, oldest first, with time offsets from the first event."""
    head = f"Run {short_id(request_id, 12)} — event timeline (read-only; Esc: back)"
    if not events:
        return [head, "(no events)"]
    start = _at(events[0].get("at"))
    lines = [head]
    for event in events:
        at = _at(event.get("at"))
        offset = f"+{(at - start).total_seconds() * 1000:.0f} ms" if at and start else "?"
        kind = str(event.get("type"))
        lines.append(f"{offset:>10}  {kind:<17} {_event_summary(kind, event.get('data') or {})}")
    return lines


def session_label(session_id: object) -> str:
    """Which chat asked: `session <id>`, or that the request named none."""
    return f"session {session_id}" if session_id else "no session (a one-off request)"


def question_lines(question: Mapping[str, Any], index: int) -> list[str]:
    """One pending permission question: what it allows, which session asked, for which run, until when."""
    expires = str(question.get("expires_at") or "")[11:19]
    asked_by = f"{session_label(question['session_id'])}, " if "session_id" in question else ""
    run = short_id(question.get("request_id"))
    shown = question.get("arguments_display")
    if shown is None:  # an older server: escape here
        shown = display_arguments(str(question.get("arguments", "")))
    digest = str(question.get("arguments_digest") or "")[:16]
    return [
        f"[{index}] {question.get('tool')} wants to run ({asked_by}run {run}, expires {expires or '?'})",
        *(f"    {line}" for line in str(shown).split("\n")),  # complete: never clipped
        f"    sha256 {digest}…" if digest else "    (no digest)",
    ]


def help_lines(commands: Iterable[tuple[str, str]]) -> list[str]:
    lines = ["bmo tui — commands (Esc: back to chat)"]
    lines += [f"  {name:<28} {text}" for name, text in commands]
    lines += [
        "keys",
        "  Enter      send the prompt / run the command",
        "  Tab        move focus between the view and the input line (in /questions: the buttons)",
        "  ↑ ↓ PgUp   scroll; Enter on a run or a button selects it",
        "  Esc        back to the chat",
        "  Ctrl-C     quit (like /quit)",
    ]
    return lines


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a streamed answer: plain `text`, or one `tool` activity line."""

    kind: str
    text: str


_DETAILS = re.compile(r'<details\s+type="tool_calls"(?P<attrs>[^>]*)>.*?</details>\n?', re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_PARTIAL_OPEN = re.compile(r"<(?:d(?:e(?:t(?:a(?:i(?:l(?:s)?)?)?)?)?)?)?$")


def _tool_line(attrs: str) -> str:
    fields = {k: html.unescape(v) for k, v in _ATTR.findall(attrs)}
    args = clip(fields.get("arguments", ""), 60)
    result = fields.get("result", "")
    with contextlib.suppress(ValueError):
        result = str(json.loads(result))
    state = "→ " + clip(result, 60) if fields.get("done", "true") == "true" else "… running"
    return f"⚙ {fields.get('name', 'tool')} {args} {state}".rstrip()


def answer_segments(text: str) -> list[Segment]:
    """Split an answer into text and tool-activity lines (Open WebUI's `<details>` blocks).

    A block still arriving at the end of a partial stream is held back rather
    than shown as raw markup.
    """
    segments: list[Segment] = []
    pos = 0
    for match in _DETAILS.finditer(text):
        if match.start() > pos:
            segments.append(Segment("text", text[pos : match.start()]))
        segments.append(Segment("tool", _tool_line(match.group("attrs"))))
        pos = match.end()
    rest = text[pos:]
    tail = re.search(r"<details\b", rest)
    if tail:
        rest = rest[: tail.start()]
    else:
        partial = _PARTIAL_OPEN.search(rest)
        if partial:
            rest = rest[: partial.start()]
    if rest:
        segments.append(Segment("text", rest))
    return segments


def settled_length(text: str) -> int:
    """How much of `text` `answer_segments` shows in full (a partial `<details>` tail is not)."""
    last = 0
    for match in _DETAILS.finditer(text):
        last = match.end()
    rest = text[last:]
    tail = re.search(r"<details\b", rest) or _PARTIAL_OPEN.search(rest)
    return last + tail.start() if tail else len(text)
