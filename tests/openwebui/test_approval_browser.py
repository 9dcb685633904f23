"""A permission question reaches the person in real Open WebUI, in a real browser.

Debian Chromium (Playwright's Python package from the Open WebUI venv, never
`playwright install`) opens Open WebUI 0.12.4, picks `bmo/local`, types a
"run <command>" prompt in the chat box; under the default `chat_only` policy the
`bash` call waits for an answer and bmo streams the question block into the
assistant message. The browser then follows the block's own links to bmo's
review page (no bearer token, the capability link only) and presses a button,
or lets the question time out; back in the chat the decision line and the
answer appear. Each scenario also checks bmo's record of the decision.

`BMO_UPDATE_SCREENSHOT=1` refreshes docs/img/open-webui-approval-question.png,
docs/img/review-page.png and docs/img/open-webui-approval-answer.png.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.openwebui.conftest import APPROVAL_TIMEOUT_S, TIMINGS, Stack
from tests.openwebui.test_open_webui import CHROMIUM, _kill_browsers

pytestmark = [pytest.mark.openwebui, pytest.mark.timeout(900)]  # the first run installs Open WebUI

REPO = Path(__file__).resolve().parents[2]
DOC_SHOTS = {
    "question": REPO / "docs" / "img" / "open-webui-approval-question.png",
    "review": REPO / "docs" / "img" / "review-page.png",
    "answer": REPO / "docs" / "img" / "open-webui-approval-answer.png",
}


def approve_in_browser(
    stack: Stack, tmp_path: Path, action: str, command: str, expect: str, **extra: Any
) -> dict[str, Any]:
    """One chat turn in Chromium, answered by `action` (allow | deny | timeout); the driver's facts."""
    assert CHROMIUM.exists(), "Debian chromium is missing: `apt-get install -y chromium` (.ci/run does it)"
    user_data_dir = tmp_path / "chromium-profile"
    started = time.monotonic()
    try:
        return stack.webui.drive(
            "approval",
            {
                "model": "bmo/local",
                "prompt": f"run {command}",
                "command": command,
                "action": action,
                "expect": expect,
                "user_data_dir": str(user_data_dir),
                "executable": str(CHROMIUM),
                "timeout": 120,
                "decided_within": APPROVAL_TIMEOUT_S + 90,
                **extra,
            },
            timeout=420,
        )
    finally:
        _kill_browsers(user_data_dir)
        TIMINGS[f"browser approval: {action}"] = time.monotonic() - started


def the_run(stack: Stack, chat_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat's finished main-turn ledger row (Open WebUI's chat id is the bmo session) and its events."""
    chat_id = chat_url.rstrip("/").rsplit("/c/", 1)[1]

    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if not r["task"] and r["outcome"] is not None]

    rows = mine(stack.wait_runs(lambda rows: bool(mine(rows)), route="chat_completions", session_id=chat_id))
    assert len(rows) == 1, rows
    return rows[0], stack.run_events(rows[0]["request_id"])


def stored_answer(stack: Stack, chat_url: str) -> str:
    """The assistant message as Open WebUI stored it, once it is done."""
    chat_id = chat_url.rstrip("/").rsplit("/c/", 1)[1]

    def finished(chat: dict[str, Any], _message: dict[str, Any]) -> bool:
        history = chat["chat"]["history"]
        return bool(history["messages"].get(history.get("currentId"), {}).get("done"))

    chat = stack.webui.wait_chat(chat_id, "", finished)
    history = chat["chat"]["history"]
    message = history["messages"][history["currentId"]]
    assert message["role"] == "assistant" and message.get("done"), message
    return str(message["content"])


def decisions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "PermissionDecided"]


def assert_question_rendered(stack: Stack, question: dict[str, Any], command: str) -> tuple[str, str]:
    """The block as Open WebUI shows it: bold title, the full command in a code block, two real links."""
    assert any("Permission needed: bash" in b for b in question["bold"]), question
    assert any(command in block for block in question["code_blocks"]), question  # complete, in a fence
    assert "answer within" in question["text"] and "arguments sha256" in question["text"]
    links = {link["text"].strip(): link["href"] for link in question["links"]}
    review, deny = links.get("Review and allow", ""), links.get("Deny", "")
    public = stack.bmo.base_url  # public_url is bmo's own address here
    assert review.startswith(f"{public}/review/") and "token=" in review, links
    assert deny.startswith(review) and deny.endswith("action=deny"), links
    assert "](" not in question["text"]  # no raw Markdown left over
    return review, deny


def keep_screenshots(shots: dict[str, str]) -> None:
    for name, path in shots.items():
        assert Path(path).stat().st_size > 10_000, f"{name} screenshot is empty"
        if os.environ.get("BMO_UPDATE_SCREENSHOT"):
            shutil.copyfile(path, DOC_SHOTS[name])


def test_allow_once_from_the_review_link_runs_the_command_and_the_answer_shows_its_output(
    approval_stack: Stack, tmp_path: Path
) -> None:
    command = "echo bmo-$((40+2))"  # the output (bmo-42) is not in the command's text
    shots = {name: str(tmp_path / f"{name}.png") for name in DOC_SHOTS}
    result = approve_in_browser(
        approval_stack,
        tmp_path,
        "allow",
        command,
        expect="Allowed by",
        expect_after=["bmo-42", "exit code 0"],
        screenshots=shots,
    )
    review, _deny = assert_question_rendered(approval_stack, result["question"], command)
    assert "bmo-42" not in result["question"]["text"]  # nothing ran before the answer
    # The review page behind the link: the complete command and the buttons, no bearer token needed.
    assert result["review_url"] == review
    assert command in result["review_text"] and "Allow once" in result["review_text"]
    assert "Allowed once" in result["review_after"]
    # Back in the chat: the decision line, then the answer with the command's output.
    answer = result["answer"]["text"]
    assert "✅ Allowed by" in answer and "(link)" in answer
    assert answer.index("Allowed by") < answer.index("bmo-42")
    stored = stored_answer(approval_stack, result["url"])
    assert "Permission needed: `bash`" in stored and "✅ Allowed by" in stored and "bmo-42" in stored
    row, events = the_run(approval_stack, result["url"])
    assert row["outcome"] == "final_answer"
    [decided] = decisions(events)
    assert (decided["decision"], decided["decided_via"], decided["scope"]) == ("allow", "link", "once")
    assert [(e["data"]["name"], e["data"]["ok"]) for e in events if e["type"] == "ToolCalled"] == [
        ("bash", True)
    ]
    keep_screenshots(shots)


def test_deny_from_the_deny_link_shows_the_denial_and_runs_nothing(
    approval_stack: Stack, tmp_path: Path
) -> None:
    # A long command (about 1,200 characters on one line): shown complete in the chat and on the page.
    command = "echo bmo-$((50+5)) # " + " ".join(f"w{i:03d}" for i in range(240))
    result = approve_in_browser(
        approval_stack, tmp_path, "deny", command, expect="Denied by", expect_after=["it needs approval."]
    )
    _review, deny = assert_question_rendered(approval_stack, result["question"], command)
    assert result["review_url"] == deny and command in result["review_text"]
    assert result["review_focused"] == "Deny"  # the Deny link pre-selects Deny
    assert "Denied." in result["review_after"]
    answer = result["answer"]["text"]
    assert "⛔ Denied by" in answer and "(link)" in answer
    assert "bmo-55" not in answer  # the command never ran
    stored = stored_answer(approval_stack, result["url"])
    assert "⛔ Denied by" in stored and "it needs approval" in stored and "bmo-55" not in stored
    row, events = the_run(approval_stack, result["url"])
    assert row["outcome"] is not None
    [decided] = decisions(events)
    assert (decided["decision"], decided["decided_via"]) == ("deny", "link")
    assert "bmo-55" not in "".join(e["data"]["text"] for e in events if e["type"] == "ContentAppended")


def test_unanswered_question_times_out_and_the_chat_says_so(approval_stack: Stack, tmp_path: Path) -> None:
    command = "echo bmo-$((60+6))"
    timed_out = f"Denied: timed out after {APPROVAL_TIMEOUT_S} s."
    result = approve_in_browser(
        approval_stack, tmp_path, "timeout", command, expect=timed_out, expect_after=["it needs approval."]
    )
    assert_question_rendered(approval_stack, result["question"], command)
    answer = result["answer"]["text"]
    assert f"⛔ {timed_out}" in answer
    assert "bmo-66" not in answer
    stored = stored_answer(approval_stack, result["url"])
    assert f"⛔ {timed_out}" in stored and "no operator answered in time" in stored and "bmo-66" not in stored
    row, events = the_run(approval_stack, result["url"])
    assert row["outcome"] is not None
    [decided] = decisions(events)
    assert (decided["decision"], decided["decided_by"], decided["decided_via"]) == (
        "deny",
        "timeout",
        "timeout",
    )
