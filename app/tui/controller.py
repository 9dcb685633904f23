"""What the TUI does: input → HTTP calls on worker threads → screen updates.

Threading rule: every method here runs on the UI thread, except the `work`
functions handed to `spawn`, which run on a worker thread and touch nothing
but the client. Their results come back through `post`, which schedules a
callback on the UI thread (`MainLoop.call_from_thread` in the app; a plain
queue drained by the test in tests). So a slow server, a streaming answer or
a run blocked on a permission question never blocks drawing or typing.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from app.agent.approval import visible
from app.tui import views
from app.tui.client import ApiError, BmoClient, ChatDelta, ChatDone, ChatEvent, ChatStarted
from app.tui.commands import HELP, Command, Prompt, Unknown, parse_input

__all__ = ["Controller", "Screen"]

RUNS_LIMIT = 30
UNREACHABLE = "server unreachable (showing the last known posture)"
LEDGER_ROWS = 20
WATCH_BACKOFF_S = (1.0, 30.0)  # reconnect delays of the question watch: first, longest

Post = Callable[[Callable[[], None]], None]
Spawn = Callable[[Callable[[], None]], None]


class Screen(Protocol):
    """What the controller needs from the widgets (see `app.tui.widgets.TuiScreen`)."""

    def chat_user(self, text: str) -> None: ...
    def chat_note(self, text: str, style: str = "note") -> None: ...
    def answer_start(self) -> object: ...
    def answer_update(self, handle: object, segments: Sequence[views.Segment]) -> None: ...
    def answer_remove(self, handle: object) -> None: ...
    def show_chat(self) -> None: ...
    def show_lines(self, lines: Sequence[str]) -> None: ...
    def show_rows(self, header: Sequence[str], rows: Sequence[tuple[str, Callable[[], None]]]) -> None: ...
    def show_questions(
        self, header: Sequence[str], items: Sequence[tuple[Sequence[str], Callable[[str], None]]]
    ) -> None: ...
    def set_sidebar(self, label: str, lines: Sequence[str], status: str) -> None: ...
    def flash(self, text: str, style: str = "note") -> None: ...
    def quit(self) -> None: ...


class Controller:
    def __init__(
        self, client: BmoClient, screen: Screen, *, post: Post, spawn: Spawn, watch: bool = False
    ) -> None:
        self.client = client
        self.screen = screen
        self._post = post
        self._spawn = spawn
        self.posture: dict[str, Any] | None = None
        self.questions: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.view = "chat"
        self.streaming = False
        self.run_id = ""
        self.activity = "idle"
        self._answer = ""
        self._answer_offset = 0  # where the current answer widget starts in `_answer`
        self._answer_handle: object = None
        self._view_seq = 0
        self._refreshing = False
        self._watch = watch  # follow the pending questions live (the app; tests that want it)
        self._sessions: dict[str, str] = {}  # request id -> the session that asked (UI thread)
        self._stopping = threading.Event()

    # -- plumbing ---------------------------------------------------------

    def _job(
        self,
        work: Callable[[], Any],
        done: Callable[[Any], None],
        failed: Callable[[str], None] | None = None,
    ) -> None:
        """Run `work` on a worker thread; `done(result)` or `failed(message)` on the UI thread."""
        on_error = failed or self._flash_error

        def run() -> None:
            try:
                result = work()
            except ApiError as exc:
                self._post(functools.partial(on_error, str(exc)))
            except Exception as exc:  # a bug must reach the screen, not kill a thread silently
                self._post(functools.partial(on_error, f"{type(exc).__name__}: {exc}"))
            else:
                self._post(functools.partial(done, result))

        self._spawn(run)

    def _flash_error(self, message: str) -> None:
        self.screen.flash(f"error: {message}", "error")

    def _open(self, name: str) -> int:
        self._view_seq += 1
        self.view = name
        return self._view_seq

    def _current(self, seq: int) -> bool:
        return seq == self._view_seq

    def _set_activity(self, activity: str) -> None:
        self.activity = activity
        self._render_sidebar()

    def _render_sidebar(self) -> None:
        label = views.sidebar_label(self.posture)
        lines = views.sidebar_lines(
            self.posture,
            server=self.client.base_url,
            session_id=self.client.session_id,
            pending=len(self.questions),
            activity=self.activity,
        )
        status = views.status_line(
            pending=len(self.questions), activity=self.activity, session_id=self.client.session_id
        )
        self.screen.set_sidebar(label, lines, status)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._render_sidebar()
        self.screen.chat_note(
            f"connected to {self.client.base_url} · session {self.client.session_id} · "
            "type a prompt (try: list files) or /help"
        )
        self.refresh()
        if self._watch:
            self._watch_questions()

    def close(self) -> None:
        """Stop the question watch (it ends at its next reconnect attempt)."""
        self._stopping.set()

    def _watch_questions(self) -> None:
        """Follow the pending questions: a question from any client reaches the sidebar at once.

        One long request (`GET /v1/permissions?follow=true`, a 15 s window the
        server ends) at a time instead of a poll every few seconds; it watches
        on at once after a window, and with backoff when the server goes away.
        """
        first, longest = WATCH_BACKOFF_S

        def run() -> None:
            sessions: dict[str, str] = {}  # this thread's own cache
            delay = first
            while not self._stopping.is_set():
                opened = time.monotonic()
                try:
                    for questions in self.client.follow_permissions():
                        delay = first
                        labelled = self._with_sessions(questions, sessions)
                        self._post(functools.partial(self._questions_pushed, labelled))
                    if time.monotonic() - opened >= first:
                        continue  # the server ended a full window: watch on at once
                except Exception:  # the server went away or restarted: try again later
                    pass
                self._stopping.wait(delay)
                delay = min(delay * 2, longest)

        self._spawn(run)

    def _with_sessions(
        self, questions: list[dict[str, Any]], sessions: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Worker thread: each question with the session of the run that asked it."""
        for question in questions:
            request_id = str(question.get("request_id") or "")
            if request_id and request_id not in sessions:
                try:
                    sessions[request_id] = self.client.session_of(request_id)
                except ApiError:
                    continue
        return [
            {**q, "session_id": sessions[str(q.get("request_id"))]}
            if str(q.get("request_id")) in sessions
            else q
            for q in questions
        ]

    def _label(self, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """UI thread: add the sessions already known to questions read by a plain poll."""
        return [
            {**q, "session_id": self._sessions[str(q.get("request_id"))]}
            if "session_id" not in q and str(q.get("request_id")) in self._sessions
            else q
            for q in questions
        ]

    def _questions_pushed(self, questions: list[dict[str, Any]]) -> None:
        for question in questions:
            if "session_id" in question:
                self._sessions[str(question.get("request_id"))] = str(question["session_id"])
        known = {q.get("question_id") for q in self.questions}
        new = [q for q in questions if q.get("question_id") not in known]
        changed = [q.get("question_id") for q in questions] != [q.get("question_id") for q in self.questions]
        self.questions = questions
        self._render_sidebar()
        if self.view == "questions" and changed:
            self._show_questions()
        if new:
            asked = new[-1]
            self.screen.flash(
                f"⏸ new permission question: {asked.get('tool')} from "
                f"{views.session_label(asked.get('session_id'))} — answer with /questions",
                "warn",
            )

    def refresh(self) -> None:
        """Posture and pending questions, for the sidebar and an open live view."""
        if self._refreshing:
            return
        self._refreshing = True

        watching = self._watch  # the watch brings questions: no permissions poll (one ledger row less)

        def work() -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
            return self.client.posture(), None if watching else self.client.permissions()

        def failed(message: str) -> None:
            self._refreshing = False
            self.screen.flash(f"refresh failed: {message}", "error")
            if not self.streaming:
                self._set_activity(UNREACHABLE)

        self._job(work, self._refreshed, failed)

    def _refreshed(self, result: tuple[dict[str, Any], list[dict[str, Any]] | None]) -> None:
        self._refreshing = False
        posture, polled = result
        questions = self.questions if polled is None else self._label(polled)
        self.posture = posture
        changed = [q.get("question_id") for q in questions] != [q.get("question_id") for q in self.questions]
        self.questions = questions
        if self.activity == UNREACHABLE:
            self.activity = "idle"
        self._render_sidebar()
        if self.view == "posture":
            self.screen.show_lines(views.posture_lines(posture))
        elif self.view == "questions" and changed:
            self._show_questions()

    # -- input ------------------------------------------------------------

    def submit(self, text: str) -> None:
        parsed = parse_input(text)
        if parsed is None:
            return
        self.screen.flash("")
        if isinstance(parsed, Prompt):
            self.send_prompt(parsed.text)
        elif isinstance(parsed, Unknown):
            self.screen.flash(parsed.message, "error")
        else:
            self.run_command(parsed)

    def run_command(self, command: Command) -> None:
        handlers: Mapping[str, Callable[[tuple[str, ...]], None]] = {
            "posture": lambda _args: self.open_posture(),
            "ledger": self.open_ledger,
            "runs": self.open_runs,
            "questions": self.open_questions,
            "help": lambda _args: self.open_help(),
            "quit": lambda _args: self.screen.quit(),
        }
        handlers[command.name](command.args)

    def escape(self) -> None:
        self._open("chat")
        self.screen.show_chat()

    # -- chat -------------------------------------------------------------

    def send_prompt(self, text: str) -> None:
        if self.view != "chat":
            self.escape()
        if self.streaming:
            self.screen.flash("busy: the agent is still answering (pending permission? /questions)", "error")
            return
        self.streaming = True
        self._answer, self._answer_offset = "", 0
        self.screen.chat_user(text)
        self._answer_handle = self.screen.answer_start()
        self._set_activity("sending…")

        def run() -> None:
            try:
                for event in self.client.chat(text):
                    self._post(functools.partial(self._on_chat_event, event))
            except ApiError as exc:
                self._post(functools.partial(self._chat_failed, str(exc)))
            except Exception as exc:
                self._post(functools.partial(self._chat_failed, f"{type(exc).__name__}: {exc}"))

        self._spawn(run)

    def _on_chat_event(self, event: ChatEvent) -> None:
        if isinstance(event, ChatStarted):
            self.run_id = event.request_id
            self._set_activity("streaming…")
            if event.request_id:
                self._follow(event.request_id)
        elif isinstance(event, ChatDelta):
            self._answer += event.text
            self._render_answer()
        elif isinstance(event, ChatDone):
            self.streaming = False
            self._close_answer()
            self._set_activity("idle")
            self.refresh()

    def _render_answer(self) -> None:
        segments = views.answer_segments(self._answer[self._answer_offset :])
        self.screen.answer_update(self._answer_handle, segments)

    def _close_answer(self) -> None:
        if self._answer[self._answer_offset :].strip():
            self._render_answer()
        elif self._answer.strip():
            self.screen.answer_remove(self._answer_handle)  # an empty tail after a note
        else:
            self.screen.answer_update(self._answer_handle, [views.Segment("text", "(empty answer)")])

    def _stream_note(self, text: str, style: str = "note") -> None:
        """A note in time order: during a stream, the answer so far stays above it."""
        if not self.streaming or self._answer_handle is None:
            self.screen.chat_note(text, style)
            return
        settled = views.settled_length(self._answer)
        if self._answer[self._answer_offset : settled].strip():
            self.screen.answer_update(
                self._answer_handle, views.answer_segments(self._answer[self._answer_offset : settled])
            )
        else:
            self.screen.answer_remove(self._answer_handle)
        self._answer_offset = settled
        self.screen.chat_note(text, style)
        self._answer_handle = self.screen.answer_start()
        self._render_answer()

    def _chat_failed(self, message: str) -> None:
        self.streaming = False
        if self._answer.strip():
            self._close_answer()
        else:
            self.screen.answer_remove(self._answer_handle)
        self.screen.chat_note(f"error: {message}", "error")
        self._set_activity("idle (last request failed)")
        self.refresh()

    def _follow(self, request_id: str) -> None:
        """Watch the run's events: a permission question shows up at once, not at the next poll."""

        def run() -> None:
            try:
                for event in self.client.follow_run(request_id):
                    if event.get("type") in ("PermissionAsked", "PermissionDecided"):
                        self._post(functools.partial(self._on_run_event, event))
            except Exception:
                return  # best effort: the periodic refresh still finds questions

        self._spawn(run)

    def _on_run_event(self, event: Mapping[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("type") == "PermissionAsked":
            args = views.clip(visible(str(data.get("arguments", ""))), 70)  # "…" marks the cut
            self._stream_note(
                f"⏸ permission needed: {data.get('tool')} {args} — answer with /questions", "warn"
            )
            self._set_activity(f"waiting for permission ({data.get('tool')})")
        else:
            via = f" via {data['decided_via']}" if data.get("decided_via") else ""
            self._stream_note(f"permission {data.get('decision')} (by {data.get('decided_by')}){via}")
            self._set_activity("streaming…" if self.streaming else "idle")
        self.refresh()

    # -- views ------------------------------------------------------------

    def open_help(self) -> None:
        self._open("help")
        self.screen.show_lines(views.help_lines(HELP))

    def open_posture(self) -> None:
        seq = self._open("posture")
        if self.posture:
            self.screen.show_lines(views.posture_lines(self.posture))
        else:
            self.screen.show_lines(["loading posture…"])

        def done(posture: dict[str, Any]) -> None:
            self.posture = posture
            self._render_sidebar()
            if self._current(seq):
                self.screen.show_lines(views.posture_lines(posture))

        self._job(self.client.posture, done)

    def open_ledger(self, args: tuple[str, ...] = ()) -> None:
        """Client traffic by default; `/run-ledger all` adds the operator's own reads (this TUI's polls)."""
        seq = self._open("ledger")
        self.screen.show_lines(["loading the run ledger…"])
        traffic = "all" if args and args[0].lower() == "all" else "client"

        def work() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return self.client.posture(), self.client.runs(limit=LEDGER_ROWS, traffic=traffic)

        def done(result: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
            self.posture, rows = result
            self._render_sidebar()
            if self._current(seq):
                self.screen.show_lines(views.ledger_lines(self.posture, rows, everything=traffic == "all"))

        self._job(work, done)

    def open_runs(self, args: tuple[str, ...] = ()) -> None:
        seq = self._open("runs")
        self.screen.show_lines(["loading runs…"])

        def done(rows: list[dict[str, Any]]) -> None:
            self.runs = rows
            if not self._current(seq):
                return
            if args:
                self._open_run_ref(args[0])
            else:
                self._show_runs()

        self._job(lambda: self.client.runs(limit=RUNS_LIMIT, route="chat_completions"), done)

    def _show_runs(self) -> None:
        header = ["Recent chat runs, newest first (Enter replays a run's timeline; Esc: back)"]
        lines = views.runs_lines(self.runs)
        if not self.runs:
            self.screen.show_lines([*header, *lines])
            return
        rows = [
            (line, functools.partial(self.open_run, str(row.get("request_id"))))
            for line, row in zip(lines, self.runs, strict=True)
        ]
        self.screen.show_rows(header, rows)

    def _open_run_ref(self, ref: str) -> None:
        found = _pick(self.runs, ref, "request_id")
        if found is None:
            self._show_runs()
            self.screen.flash(f"no run '{ref}' among the {len(self.runs)} most recent chat runs", "error")
            return
        self.open_run(str(found["request_id"]))

    def open_run(self, request_id: str) -> None:
        seq = self._open("timeline")
        self.screen.show_lines([f"loading the timeline of {views.short_id(request_id, 12)}…"])

        def done(events: list[dict[str, Any]]) -> None:
            if self._current(seq):
                self.screen.show_lines(views.timeline_lines(events, request_id=request_id))

        self._job(lambda: self.client.run_events(request_id), done)

    def open_questions(self, args: tuple[str, ...] = ()) -> None:
        seq = self._open("questions")
        self.screen.show_lines(["loading pending questions…"])
        decision = args[0].lower() if args else ""
        if args and (decision not in ("allow", "allow_session", "deny") or len(args) < 2):
            self.screen.flash("usage: /questions [allow|allow_session|deny N]", "error")
            decision = ""

        def done(questions: list[dict[str, Any]]) -> None:
            self.questions = self._label(questions)
            self._render_sidebar()
            if not self._current(seq):
                return
            self._show_questions()
            if decision:
                found = _pick(self.questions, args[1], "question_id")
                if found is None:
                    self.screen.flash(f"no pending question '{args[1]}'", "error")
                else:
                    self.decide(str(found["question_id"]), decision)

        self._job(self.client.permissions, done)

    def _show_questions(self) -> None:
        header = [
            "Pending permission questions (read the arguments, then Allow or Deny; Esc: back)",
        ]
        if not self.questions:
            self.screen.show_lines([*header, "(no pending questions)"])
            return
        items = [
            (views.question_lines(q, i), functools.partial(self.decide, str(q.get("question_id"))))
            for i, q in enumerate(self.questions, start=1)
        ]
        self.screen.show_questions(header, items)

    def decide(self, question_id: str, decision: str) -> None:
        tool = next((q.get("tool") for q in self.questions if q.get("question_id") == question_id), "tool")

        digest = next(
            (q.get("arguments_digest") for q in self.questions if q.get("question_id") == question_id), None
        )

        def done(_answer: dict[str, Any]) -> None:
            verb = {"allow": "allowed", "allow_session": "allowed for this session"}.get(decision, "denied")
            self.screen.flash(f"{verb}: {tool} ({views.short_id(question_id)})")
            self.questions = [q for q in self.questions if q.get("question_id") != question_id]
            if self.view == "questions":
                self._show_questions()
            self._render_sidebar()
            self.refresh()

        self._job(lambda: self.client.decide(question_id, decision, digest), done)


def _pick(rows: Sequence[Mapping[str, Any]], ref: str, key: str) -> Mapping[str, Any] | None:
    """A row by its 1-based position in the list shown, or by an id prefix."""
    if ref.isdigit() and 1 <= int(ref) <= len(rows) and len(ref) <= 3:
        return rows[int(ref) - 1]
    matches = [r for r in rows if str(r.get(key, "")).startswith(ref.lower())]
    return matches[0] if len(matches) == 1 else None
