"""`bmo tui`'s controller and screens against a real `bmo serve`, with real worker threads.

The test thread plays the UI thread: worker results wait in a queue until it
drains them, exactly as `MainLoop.call_from_thread` hands them to urwid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.tui.app import build, new_session_id
from app.tui.bridge import QueueBridge
from app.tui.client import BmoClient
from app.tui.controller import Controller
from app.tui.widgets import TuiScreen
from tests.e2e.server import BmoServer

pytestmark = pytest.mark.timeout(90)

SIZE = (80, 24)
WAIT = 30.0


class Tui:
    def __init__(self, server: BmoServer) -> None:
        self.client = BmoClient(server.base_url + "/v1", server.token, session_id=new_session_id())
        self.bridge = QueueBridge()
        self.quit = False
        self.screen: TuiScreen
        self.controller: Controller
        self.screen, self.controller = build(
            self.client, post=self.bridge.post, spawn=self.bridge.spawn, on_quit=self._quit, watch=True
        )
        self.controller.start()

    def _quit(self) -> None:
        self.quit = True

    def text(self, size: tuple[int, int] = SIZE) -> str:
        return "\n".join(row.decode() for row in self.screen.render(size, focus=True).text)

    def type(self, text: str) -> None:
        for ch in text:
            self.screen.keypress(SIZE, ch)
        self.screen.keypress(SIZE, "enter")

    def wait_for(self, needle: str, size: tuple[int, int] = SIZE, timeout: float = WAIT) -> str:
        if not self.bridge.wait_until(lambda: needle in self.text(size), timeout):
            raise AssertionError(f"{needle!r} not on screen:\n{self.text(size)}")
        return self.text(size)

    def wait_reading(self, needle: str, command: str, timeout: float = WAIT) -> str:
        """Re-run `command` until `needle` shows: the ledger is a read model that may trail a run."""
        deadline = time.monotonic() + timeout
        while True:
            self.type(command)
            if self.bridge.wait_until(lambda: needle in self.text(), 1.0) or time.monotonic() > deadline:
                return self.wait_for(needle, timeout=0)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        if not self.bridge.wait_until(predicate, timeout):
            raise AssertionError(f"timed out waiting for {what}:\n{self.text()}")


def finished_events(tui: Tui) -> list[dict]:
    """The current run's timeline once the read model has its `Finished` event."""
    deadline = time.monotonic() + WAIT
    while True:
        events = tui.client.run_events(tui.controller.run_id)
        if (events and events[-1]["type"] == "Finished") or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


@pytest.fixture
def tui_for(make_server: Callable[..., BmoServer]) -> Iterator[Callable[..., Tui]]:
    made: list[Tui] = []

    def make(**server_kwargs: object) -> Tui:
        tui = Tui(make_server(**server_kwargs))
        made.append(tui)
        return tui

    yield make
    for tui in made:
        tui.controller.close()
        tui.client.close()


def test_permission_answered_from_questions_unblocks_the_run(tui_for: Callable[..., Tui]) -> None:
    tui = tui_for()  # default config: tool_policy = "chat_only"
    tui.wait_for("OpenAI compat: enabled (chat_only)")
    tui.type("run `echo hi`")
    tui.wait_for("⏸ permission needed: bash")
    assert tui.controller.streaming  # the run is blocked on the question
    tui.type("/questions")
    screen = tui.wait_for("< Allow once >")
    assert "[1] bash wants to run" in screen
    assert '"command": "echo hi"' in screen and "sha256 " in screen
    tui.screen.keypress(SIZE, "enter")  # Allow has the focus
    tui.wait(lambda: not tui.controller.streaming, "the run to finish")
    tui.screen.keypress(SIZE, "esc")
    # Each line arrives on its own (the answer, the decision notice, the tool line): wait for each, not one.
    for line in ("Ran `echo hi`", "permission allow (by operator)", '⚙ bash {"command": "echo hi"} → hi'):
        tui.wait_for(line, size=(80, 40))
    events = finished_events(tui)
    kinds = [e["type"] for e in events]
    assert kinds.index("PermissionAsked") < kinds.index("PermissionDecided") < kinds.index("Finished")
    decided = next(e for e in events if e["type"] == "PermissionDecided")
    assert decided["data"]["decision"] == "allow"
    assert decided["data"]["decided_by"] == "operator"
    assert decided["data"]["decided_via"] == "tui" and len(decided["data"]["digest"]) == 64
    assert events[-1]["data"]["outcome"] == "final_answer"


def test_deny_by_command_still_ends_the_run(tui_for: Callable[..., Tui]) -> None:
    tui = tui_for()
    tui.type("run `echo hi`")
    tui.wait(lambda: bool(tui.controller.questions), "a pending question")
    tui.type("/questions deny 1")
    tui.wait(lambda: not tui.controller.streaming, "the run to finish")
    tui.wait_for("denied: bash")
    events = finished_events(tui)
    decided = next(e for e in events if e["type"] == "PermissionDecided")
    assert decided["data"]["decision"] == "deny"
    assert events[-1]["type"] == "Finished"


def test_chat_report_runs_and_timeline(tui_for: Callable[..., Tui]) -> None:
    tui = tui_for()
    tui.type("list files")
    tui.wait(lambda: bool(tui.controller.run_id) and not tui.controller.streaming, "the answer")
    chat = tui.text()
    assert "you › list files" in chat
    assert "⚙ list_dir" in chat and "README.md" in chat and "src/" in chat
    run_id = tui.controller.run_id

    report = tui.wait_reading("chat_completions=1", "/openai-compat")
    assert "OpenAI compat — live posture" in report
    assert "advertised models: bmo/local" in report
    assert "enabled: yes   tool_policy: chat_only   ambiguity_action: ask" in report
    assert "chat_completions=1" in report
    assert "bmo-tui/" in report  # the TUI names itself among the User-Agents
    assert "ledger: " in report and " / 10000 runs" in report

    tui.wait_reading(run_id[:8] + "… final_answer", "/runs")
    tui.screen.keypress(SIZE, "enter")  # newest chat run is focused
    timeline = tui.wait_for("Finished", size=(80, 40))
    assert f"Run {run_id[:12]}… — event timeline" in timeline
    for kind in ("Fired", "Started", "ModelCalled", "ToolCalled", "ContentAppended"):
        assert kind in timeline
    assert "list_dir ok" in timeline

    tui.type("/run-ledger")
    ledger = tui.wait_for("client traffic only", size=(120, 40))
    assert "chat_completions" in ledger
    operator_rows = [line for line in ledger.splitlines() if " posture " in line or " permissions " in line]
    assert operator_rows == []  # the TUI's own polls do not crowd the ledger
    tui.type("/run-ledger all")
    everything = tui.wait_for("operator reads included", size=(120, 40))
    assert any(" posture " in line for line in everything.splitlines())

    tui.type("/nope")
    assert "unknown command /nope" in tui.wait_for("unknown command")
    tui.type("/quit")
    assert tui.quit


def test_every_prompt_carries_the_tui_session_id(tui_for: Callable[..., Tui]) -> None:
    tui = tui_for()
    tui.type("list files")
    tui.wait(lambda: bool(tui.controller.run_id) and not tui.controller.streaming, "first answer")
    first = tui.controller.run_id
    tui.type("read README.md")
    tui.wait(lambda: tui.controller.run_id != first and not tui.controller.streaming, "second answer")
    tui.wait_for("Demo project", size=(80, 40))

    def mine() -> list[dict]:  # the ledger is a read model: it may trail the answer briefly
        rows = tui.client.runs(route="chat_completions")
        return [r for r in rows if r["session_id"] == tui.client.session_id]

    tui.wait(lambda: len(mine()) == 2, "both runs in the ledger")
    assert {r["request_id"] for r in mine()} == {first, tui.controller.run_id}
    assert all(r["client_ua"].startswith("bmo-tui/") for r in mine())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[options.openai_compat]\nenabled = false\n", "disabled"),
        ('[options.openai_compat]\ntool_policy = "auto_approve"\n', "enabled (auto_approve)"),
    ],
)
def test_sidebar_label_from_config(tui_for: Callable[..., Tui], config: str, expected: str) -> None:
    tui = tui_for(config_text=config)
    tui.wait_for(f"OpenAI compat: {expected}")
    assert f"OpenAI compat: {expected}" in tui.text((140, 30))  # the wide sidebar too


def test_sidebar_goes_degraded_and_back(tui_for: Callable[..., Tui], tmp_path: Path) -> None:
    switch = tmp_path / "faults-on"
    tui = tui_for(extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)})
    tui.wait_for("OpenAI compat: enabled (chat_only)")
    switch.touch()
    tui.type("list files")  # a session run needs the store: a clean 503, shown, no crash
    tui.wait(lambda: not tui.controller.streaming, "the request to end")
    tui.controller.refresh()  # what the periodic tick does
    screen = tui.wait_for("OpenAI compat: degraded — persist failures")
    assert "error: 503" in screen
    tui.type("/openai-compat")
    assert "!! DEGRADED — persist failures" in tui.wait_for("!! DEGRADED")
    switch.unlink()  # the next append (the refresh's own request) succeeds and clears the flag

    def recovered() -> bool:
        tui.controller.refresh()
        return "OpenAI compat: enabled (chat_only)" in tui.text()

    tui.wait(recovered, "the degraded flag to clear")


def _ask_from_another_client(server: BmoServer, session: str) -> threading.Thread:
    """An Open WebUI-like client whose run waits on a permission question (chat_only)."""

    def chat() -> None:
        httpx.post(
            f"{server.base_url}/v1/chat/completions",
            headers={**server.headers, "X-BMO-Session-Id": session, "User-Agent": "Open-WebUI-test"},
            json={"model": "bmo/local", "messages": [{"role": "user", "content": "run `echo pushed`"}]},
            timeout=WAIT * 4,
        )

    thread = threading.Thread(target=chat, daemon=True)
    thread.start()
    return thread


def test_a_question_from_another_client_is_pushed_with_its_session(
    make_server: Callable[..., BmoServer],
) -> None:
    server = make_server()
    tui = Tui(server)
    try:
        tui.wait_for("OpenAI compat: enabled (chat_only)")
        tui.wait_for("questions: 0")
        thread = _ask_from_another_client(server, "owui-chat-42")
        # no periodic refresh runs in this harness: only a push can bring it
        tui.wait_for("questions: 1 pending")
        assert "owui-chat-42" in tui.wait_for("permission question")
        tui.type("/questions")
        screen = tui.wait_for("< Allow once >")
        assert "session owui-chat-42" in screen
        tui.type("/questions deny 1")
        tui.wait_for("denied: bash")
        thread.join(WAIT)
        tui.wait_for("questions: 0")
    finally:
        tui.controller.close()
        tui.client.close()


def _focused(screen: str) -> str:
    return next((b for b in ("Allow once", "Allow for session", "Deny") if f"▸< {b} >" in screen), "")


def test_question_buttons_show_focus_and_answer_to_tab_arrows_and_enter(
    make_server: Callable[..., BmoServer],
) -> None:
    server = make_server()
    tui = Tui(server)
    try:
        thread = _ask_from_another_client(server, "owui-chat-7")

        def asked() -> bool:
            tui.controller.refresh()  # independent of the push: this test is about the buttons
            return bool(tui.controller.questions)

        tui.wait(asked, "the question")
        tui.type("/questions")
        screen = tui.wait_for("< Deny >")
        assert _focused(screen) == "Allow once"  # the focused button is marked, not only coloured
        tui.screen.keypress(SIZE, "tab")
        assert _focused(tui.text()) == "Allow for session"
        tui.screen.keypress(SIZE, "tab")
        assert _focused(tui.text()) == "Deny"
        tui.screen.keypress(SIZE, "tab")  # past the last button: the input line
        assert _focused(tui.text()) == ""
        tui.screen.keypress(SIZE, "tab")  # and back to the first button
        assert _focused(tui.text()) == "Allow once"
        tui.screen.keypress(SIZE, "shift tab")
        assert _focused(tui.text()) == ""
        tui.screen.keypress(SIZE, "tab")
        tui.screen.keypress(SIZE, "right")
        assert _focused(tui.text()) == "Allow for session"
        tui.screen.keypress(SIZE, "left")
        assert _focused(tui.text()) == "Allow once"
        tui.screen.keypress(SIZE, "right")
        tui.screen.keypress(SIZE, "right")
        assert _focused(tui.text()) == "Deny"
        tui.screen.keypress(SIZE, "enter")
        tui.wait_for("denied: bash")
        thread.join(WAIT)
    finally:
        tui.controller.close()
        tui.client.close()
