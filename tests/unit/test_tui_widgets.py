"""`bmo tui` screens rendered to text (urwid canvases) against a scripted client."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import urwid

from app.tui.app import build
from app.tui.bridge import QueueBridge
from app.tui.client import ApiError, ChatDelta, ChatDone, ChatEvent, ChatStarted
from app.tui.controller import Controller
from app.tui.widgets import WIDE_COLS, TuiScreen
from tests.unit.test_tui_views import DETAILS, EVENTS, POSTURE, RUNS

QUESTION = {
    "question_id": "0b2f5aa0a1df41deace88498de865ca7",
    "request_id": "157dede7492b40acab9caebf8f8441b5",
    "tool": "bash",
    "arguments": '{"command": "echo hi"}',
    "expires_at": "2026-11-25T21:17:25.448049+00:00",
    "status": "pending",
}


class FakeClient:
    """The BmoClient surface the controller uses, scripted."""

    base_url = "http://127.0.0.1:9000"
    session_id = "tui-test"

    def __init__(self) -> None:
        self.posture_body: dict[str, Any] = copy.deepcopy(POSTURE)
        self.questions: list[dict[str, Any]] = []
        self.decisions: list[tuple[str, str]] = []
        self.prompts: list[str] = []
        self.fail_posture = False
        self.runs_calls: list[str | None] = []
        self.traffic_calls: list[str | None] = []

    def posture(self) -> dict[str, Any]:
        if self.fail_posture:
            raise ApiError("cannot reach http://127.0.0.1:9000: ConnectError")
        return copy.deepcopy(self.posture_body)

    def permissions(self) -> list[dict[str, Any]]:
        return list(self.questions)

    def runs(
        self, *, limit: int = 30, route: str | None = None, traffic: str | None = None
    ) -> list[dict[str, Any]]:
        self.runs_calls.append(route)
        self.traffic_calls.append(traffic)
        return copy.deepcopy(RUNS)

    def run_events(self, request_id: str) -> list[dict[str, Any]]:
        return copy.deepcopy(EVENTS)

    def decide(self, question_id: str, decision: str, digest: str | None = None) -> dict[str, Any]:
        self.decisions.append((question_id, decision))
        self.questions = [q for q in self.questions if q["question_id"] != question_id]
        return {"question_id": question_id, "status": "allowed"}

    def chat(self, prompt: str, *, model: str | None = None) -> Iterator[ChatEvent]:
        self.prompts.append(prompt)
        yield ChatStarted("2a2f5e18ec5d42b1a48c624456f686dc")
        yield ChatDelta(DETAILS[:40])
        yield ChatDelta(DETAILS[40:] + "Here are the entries in `.`:\n")
        yield ChatDelta("README.md\nsrc/\n")
        yield ChatDone("stop")

    def follow_run(self, request_id: str) -> Iterator[dict[str, Any]]:
        return iter(())


class Harness:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.bridge = QueueBridge(inline=True)
        self.quit_called = False
        self.screen, self.controller = build(
            self.client,  # type: ignore[arg-type]
            post=self.bridge.post,
            spawn=self.bridge.spawn,
            on_quit=self._quit,
        )
        self.controller.start()
        self.bridge.drain()

    def _quit(self) -> None:
        self.quit_called = True

    def type(self, text: str, size: tuple[int, int] = (80, 24)) -> None:
        for ch in text:
            self.screen.keypress(size, ch)
        self.screen.keypress(size, "enter")
        self.bridge.drain()

    def key(self, key: str, size: tuple[int, int] = (80, 24)) -> None:
        self.screen.keypress(size, key)
        self.bridge.drain()

    def text(self, size: tuple[int, int] = (80, 24)) -> list[str]:
        canvas = self.screen.render(size, focus=True)
        return [row.decode("utf-8") for row in canvas.text]

    def screen_text(self, size: tuple[int, int] = (80, 24)) -> str:
        return "\n".join(self.text(size))


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_first_screen_80x24(h: Harness) -> None:
    rows = h.text()
    assert len(rows) == 24
    assert all(len(r) == 80 for r in rows)
    assert rows[0].rstrip() == "OpenAI compat: enabled (chat_only)"
    assert "session tui-test" in rows[1]
    assert "connected to http://127.0.0.1:9000" in h.screen_text()
    assert rows[-1].startswith("› ")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"enabled": False}, "disabled"),
        ({}, "enabled (chat_only)"),
        ({"tool_policy": "auto_approve"}, "enabled (auto_approve)"),
        ({"ledger": {"degraded": True}}, "degraded — persist failures"),
    ],
)
def test_sidebar_label_for_each_state_narrow_and_wide(
    h: Harness, changes: dict[str, Any], expected: str
) -> None:
    ledger = changes.pop("ledger", None)
    h.client.posture_body.update(changes)
    if ledger:
        h.client.posture_body["ledger"].update(ledger)
    h.controller.refresh()
    h.bridge.drain()
    assert h.text()[0].rstrip() == f"OpenAI compat: {expected}"
    wide = h.text((WIDE_COLS + 10, 30))
    assert any(row.rstrip().endswith(f"OpenAI compat: {expected}") for row in wide)
    assert h.screen.wide


def test_degraded_overrides_policy_live(h: Harness) -> None:
    assert "OpenAI compat: enabled (chat_only)" in h.text()[0]
    h.client.posture_body["ledger"]["degraded"] = True
    h.controller.refresh()  # what the periodic tick does
    h.bridge.drain()
    assert h.text()[0].rstrip() == "OpenAI compat: degraded — persist failures"
    h.client.posture_body["ledger"]["degraded"] = False
    h.controller.refresh()
    h.bridge.drain()
    assert h.text()[0].rstrip() == "OpenAI compat: enabled (chat_only)"


def test_openai_compat_report_on_screen(h: Harness) -> None:
    h.type("/openai-compat")
    text = h.screen_text()
    assert "OpenAI compat — live posture (read-only; Esc: back)" in text
    assert "enabled: yes   tool_policy: chat_only   ambiguity_action: ask" in text
    assert "advertised models: bmo/local, ollama/qwen2.5-coder:7b" in text
    assert "ledger: 42 / 10000 runs" in text
    assert "routes: chat_completions=30  models_list=7  posture=5" in text
    assert "Python/3.11 aiohttp/3.11.18" in text
    assert "157dede7…  [  1654 ms]  final_answer" in text
    assert "3e81eab8…  [ 30001 ms]  error_500" in text  # the 5th outcome still fits in 80x24


def test_openwebui_alias_and_degraded_warning(h: Harness) -> None:
    h.client.posture_body["ledger"].update(degraded=True, last_persist_error="disk I/O error")
    h.type("/openwebui")
    rows = h.text()
    assert rows[0].rstrip() == "OpenAI compat: degraded — persist failures"
    assert rows[3].startswith("!! DEGRADED — persist failures")
    assert "last error: disk I/O error" in rows[4]


def test_report_refreshes_live_while_open(h: Harness) -> None:
    h.type("/openai-compat")
    h.client.posture_body["ledger"]["runs"] = 43
    h.controller.refresh()
    h.bridge.drain()
    assert "ledger: 43 / 10000 runs" in h.screen_text()


def test_escape_returns_to_chat(h: Harness) -> None:
    h.type("/help")
    assert "/openai-compat  (/openwebui)" in h.screen_text()
    h.key("esc")
    assert "connected to http://127.0.0.1:9000" in h.screen_text()


def test_chat_streams_answer_with_tool_activity(h: Harness) -> None:
    h.type("list files")
    text = h.screen_text()
    assert h.client.prompts == ["list files"]
    assert "you › list files" in text
    assert '⚙ list_dir {"path": "."} → README.md src/' in text
    assert "bmo › Here are the entries in `.`:" in text
    assert "<details" not in text
    assert h.controller.streaming is False
    assert "idle" in h.text()[1]


def test_runs_list_and_timeline(h: Harness) -> None:
    h.type("/runs")
    assert h.client.runs_calls == ["chat_completions"]
    text = h.screen_text()
    assert "Recent chat runs, newest first" in text
    assert " 1 21:15:25 157dede7… final_answer     [  1654 ms] tui-abc" in text
    h.key("enter")  # the first run is focused
    text = h.screen_text()
    assert "Run 157dede7492b… — event timeline" in text
    assert "+1500 ms  PermissionDecided allow by operator" in text
    assert "+1654 ms  Finished          final_answer 200 [  1654 ms]" in text


def test_runs_by_index_and_by_prefix(h: Harness) -> None:
    h.type("/runs 2")
    assert "Run 2a2f5e18ec5d… — event timeline" in h.screen_text()
    h.type("/runs 157d")
    assert "Run 157dede7492b… — event timeline" in h.screen_text()
    h.type("/runs nope")
    assert "no run 'nope'" in h.screen_text()


def test_down_arrow_selects_another_run(h: Harness) -> None:
    h.type("/runs")
    h.key("down")
    h.key("enter")
    assert "Run 2a2f5e18ec5d… — event timeline" in h.screen_text()


def test_run_ledger_view(h: Harness) -> None:
    h.type("/run-ledger")
    text = h.screen_text()
    assert h.client.runs_calls == [None]
    assert h.client.traffic_calls == ["client"]  # the TUI's own polls stay out by default
    assert "Run ledger (read-only; Esc: back)" in text
    assert "size: 42 / 10000 runs (oldest pruned)" in text
    assert "client traffic only" in text
    h.type("/ledger all")
    assert h.client.traffic_calls == ["client", "all"]
    assert "operator reads included" in h.screen_text()


def test_questions_allow_with_the_button(h: Harness) -> None:
    h.client.questions = [dict(QUESTION)]
    h.controller.refresh()
    h.bridge.drain()
    assert "questions: 1 pending" in h.text()[1]
    h.type("/questions")
    text = h.screen_text()
    assert "[1] bash wants to run (run 157dede7…, expires 21:17:25)" in text
    assert '"command": "echo hi"' in text
    assert "< Allow once >" in text and "< Deny >" in text and "< Allow for session >" in text
    h.key("enter")  # focus sits on Allow
    assert h.client.decisions == [(QUESTION["question_id"], "allow")]
    text = h.screen_text()
    assert "allowed: bash" in text
    assert "(no pending questions)" in text
    assert "questions: 0" in h.text()[1]


def test_questions_deny_by_command(h: Harness) -> None:
    h.client.questions = [dict(QUESTION)]
    h.type("/questions deny 1")
    assert h.client.decisions == [(QUESTION["question_id"], "deny")]
    assert "denied: bash" in h.screen_text()


def test_questions_bad_usage_is_a_message(h: Harness) -> None:
    h.type("/questions maybe")
    assert "usage: /questions [allow|allow_session|deny N]" in h.screen_text()
    assert h.client.decisions == []


def test_unknown_slash_is_a_message_not_a_crash(h: Harness) -> None:
    h.type("/frobnicate")
    text = h.screen_text()
    assert "unknown command /frobnicate" in text
    h.type("/")
    assert "type a command after '/'" in h.screen_text()


def test_typing_in_a_list_goes_to_the_input(h: Harness) -> None:
    h.type("/runs")
    h.type("/help")
    assert "bmo tui — commands" in h.screen_text()


def test_quit(h: Harness) -> None:
    h.type("/quit")
    assert h.quit_called


def test_unreachable_server_is_shown_and_clears(h: Harness) -> None:
    h.client.fail_posture = True
    h.controller.refresh()
    h.bridge.drain()
    rows = h.text()
    assert rows[0].rstrip() == "OpenAI compat: enabled (chat_only)"  # the last known label
    assert rows[1].startswith("server unreachable")
    assert "refresh failed: cannot reach" in h.screen_text()
    h.client.fail_posture = False
    h.controller.refresh()
    h.bridge.drain()
    assert h.text()[1].startswith("idle")


def test_server_errors_are_shown(h: Harness) -> None:
    h.client.fail_posture = True
    h.type("/openai-compat")
    assert "error: cannot reach http://127.0.0.1:9000" in h.screen_text()


@pytest.mark.parametrize(
    "size", [(80, 24), (60, 12), (20, 5), (1, 1), (WIDE_COLS, 40), (200, 60), (WIDE_COLS - 1, 24)]
)
@pytest.mark.parametrize("command", ["", "/openai-compat", "/runs", "/questions", "/help", "list files"])
def test_any_size_renders(size: tuple[int, int], command: str) -> None:
    h = Harness()
    h.client.questions = [dict(QUESTION)]
    if command:
        h.type(command, size)
    rows = h.text(size)
    assert len(rows) == size[1]
    assert all(len(r) == size[0] for r in rows) or size[0] < 2


def test_resize_back_and_forth_keeps_focus_and_input(h: Harness) -> None:
    h.type("/runs")
    h.text((WIDE_COLS + 20, 30))
    h.screen.keypress((WIDE_COLS + 20, 30), "down")
    h.text((80, 24))
    h.key("enter")
    assert "Run 2a2f5e18ec5d… — event timeline" in h.screen_text()
    for ch in "abc":
        h.screen.keypress((WIDE_COLS + 20, 30), ch)
    assert h.screen.input.edit_text == "abc"


def test_controller_is_on_the_ui_thread_only() -> None:
    """Worker results are queued, not applied, until the owner drains them."""
    client = FakeClient()
    bridge = QueueBridge(inline=True)
    screen = TuiScreen(on_submit=lambda _t: None, on_escape=lambda: None, on_quit=lambda: None)
    controller = Controller(client, screen, post=bridge.post, spawn=bridge.spawn)  # type: ignore[arg-type]
    controller.refresh()
    assert controller.posture is None  # the HTTP call ran, its result waits for the UI thread
    assert bridge.drain() == 1
    assert controller.posture is not None
    assert isinstance(screen, urwid.Widget)


def test_permission_notes_keep_time_order_in_the_chat(h: Harness) -> None:
    c = h.controller
    c.streaming = True
    h.screen.chat_user("run `echo hi`")
    c._answer_handle = h.screen.answer_start()
    c._on_chat_event(ChatStarted(""))
    c._on_chat_event(ChatDelta(DETAILS + "Listed.\n" + DETAILS[:30]))
    c._on_run_event(
        {"type": "PermissionAsked", "data": {"tool": "bash", "arguments": '{"command": "echo hi"}'}}
    )
    c._on_run_event({"type": "PermissionDecided", "data": {"decision": "allow", "decided_by": "operator"}})
    c._on_chat_event(ChatDelta(DETAILS[30:] + "Ran it."))
    c._on_chat_event(ChatDone("stop"))
    h.bridge.drain()
    rows = [r.rstrip() for r in h.text((100, 40))]
    order = [
        '⚙ list_dir {"path": "."} → README.md src/',
        "bmo › Listed.",
        '⏸ permission needed: bash {"command": "echo hi"} — answer with /questions',
        "permission allow (by operator)",
        '⚙ list_dir {"path": "."} → README.md src/',
        "bmo › Ran it.",
    ]
    at = rows.index("you › run `echo hi`")
    for line in order:
        at = rows.index(line, at + 1)  # each one below the previous
    assert "bmo › …" not in "\n".join(rows)
