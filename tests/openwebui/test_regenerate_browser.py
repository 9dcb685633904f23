"""Regenerate and edit in real Open WebUI, in a real browser: the session follows the chat.

Open WebUI sends the whole conversation on every turn. Its *Regenerate* resends
the conversation up to the answer it replaces, and an edited earlier message
sends the edited branch; bmo must follow that history, not append it to the
session's transcript (the regenerated answer would see the answer it replaces).

Debian Chromium (Playwright's Python package from the Open WebUI venv, never
`playwright install`) opens Open WebUI 0.12.4 on the scripted upstream model
`up/fake-model` (distinct, deterministic answers; every request the model got is
recorded), sends a prompt, presses *Regenerate* → *Try Again* on the answer,
then edits the user message and sends it. bmo's run ledger (the session id is
Open WebUI's chat id) and the upstream's recorded requests tell what happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_upstream import Text
from tests.openwebui.conftest import TIMINGS, Stack
from tests.openwebui.test_open_webui import CHROMIUM, _kill_browsers

pytestmark = [pytest.mark.openwebui, pytest.mark.timeout(900)]  # the first run installs Open WebUI

PROMPT = "What is in README.md?"
EDITED = "What is in src/main.py instead?"
ANSWERS = {
    "first": "First answer: the README says TODO.",
    "regenerated": "Regenerated answer: a demo project.",
    "edited": "Edited answer: main returns 42.",
}


Run = tuple[dict[str, Any], list[dict[str, Any]]]  # a ledger row and its events


def chat_runs(stack: Stack, chat_id: str, count: int) -> dict[str, Run]:
    """The chat's finished main-turn runs, keyed by the scripted answer each one streamed."""

    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if not r["task"] and r["outcome"] is not None]

    rows = mine(
        stack.wait_runs(
            lambda rows: len(mine(rows)) >= count, timeout=60, route="chat_completions", session_id=chat_id
        )
    )
    assert len(rows) == count, rows
    runs: dict[str, Run] = {}
    for row in rows:
        events = stack.run_events(row["request_id"])
        text = "".join(e["data"]["text"] for e in events if e["type"] == "ContentAppended")
        [name] = [name for name, answer in ANSWERS.items() if answer in text]
        runs[name] = (row, events)
    return runs


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def test_regenerate_and_edit_in_the_browser_follow_the_chat_not_the_stale_transcript(
    stack: Stack, tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), "Debian chromium is missing: `apt-get install -y chromium` (.ci/run does it)"
    upstream = stack.upstream
    assert upstream is not None
    seen = len(upstream.requests)
    upstream.script(*(Text(answer) for answer in ANSWERS.values()))  # main turns only: tasks go to bmo/local
    user_data_dir = tmp_path / "chromium-profile"
    started = time.monotonic()
    try:
        result = stack.webui.drive(
            "regenerate_and_edit",
            {
                "model": "up/fake-model",
                "prompt": PROMPT,
                "edited_prompt": EDITED,
                "expect": ANSWERS,
                "user_data_dir": str(user_data_dir),
                "executable": str(CHROMIUM),
                "timeout": 120,
                "failure_screenshot": str(tmp_path / "failure.png"),
                "screenshots": {name: str(tmp_path / f"{name}.png") for name in ANSWERS},
            },
            timeout=600,
        )
    finally:
        _kill_browsers(user_data_dir)
        TIMINGS["browser regenerate and edit"] = time.monotonic() - started
    chat_id = result["url"].rstrip("/").rsplit("/c/", 1)[1]
    assert result["final_url"] == result["url"]  # one chat throughout: one bmo session
    # The page shows the edited branch's answer in place of the others.
    assert ANSWERS["regenerated"] in result["after_regenerate"]
    assert EDITED in result["after_edit"] and ANSWERS["edited"] in result["after_edit"]

    runs = chat_runs(stack, chat_id, 3)
    # What the model was sent on each turn (bmo's system prompt aside), in order.
    sent = [
        [(m["role"], m["content"]) for m in r["body"]["messages"] if m["role"] != "system"]
        for r in upstream.requests[seen:]
    ]
    assert sent == [[("user", PROMPT)], [("user", PROMPT)], [("user", EDITED)]], sent

    first_row, first = runs["first"]
    assert first_row["outcome"] == "final_answer"
    assert not of_type(first, "HistoryDiverged")
    assert [s["message_count"] for s in of_type(first, "Started")] == [1]
    # Regenerate: the conversation up to the replaced answer; the transcript does not grow to 3.
    regen_row, regen = runs["regenerated"]
    assert regen_row["outcome"] == "final_answer"
    assert of_type(regen, "HistoryDiverged") == [{"kept": 1, "dropped": 1, "client_messages": 1}]
    assert [s["message_count"] for s in of_type(regen, "Started")] == [1]
    # Edit: the edited first message replaces the whole transcript (the regenerated branch too).
    edit_row, edit = runs["edited"]
    assert edit_row["outcome"] == "final_answer"
    assert of_type(edit, "HistoryDiverged") == [{"kept": 0, "dropped": 2, "client_messages": 1}]
    assert [s["message_count"] for s in of_type(edit, "Started")] == [1]
    assert all(row["session_id"] == chat_id for row in (first_row, regen_row, edit_row))
