"""Open WebUI 0.12.4 against a real `bmo serve`, driven the way its web page drives it.

Each scenario asserts on what Open WebUI stored (`GET /api/v1/chats/{id}`: content,
title, follow-ups, tags, error text) and on bmo's ledger
(`GET /v1/openai-compat/runs`: outcome, `task`, session). See conftest.py for
the three stacks and docs/open-webui.md for the operator's guide these tests back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_upstream import Text, ToolCalls
from tests.openwebui.conftest import TIMINGS, Stack
from tests.openwebui.webui import OpenWebUI

pytestmark = [pytest.mark.openwebui, pytest.mark.timeout(900)]  # the first run installs Open WebUI

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "open-webui-bmo.png"
CHROMIUM = Path("/usr/bin/chromium")
TASKS = ("title_generation", "tags_generation", "follow_up_generation")
AIOHTTP_UA = "Python/3.11 aiohttp/"


def timed(name: str, started: float) -> None:
    TIMINGS[name] = time.monotonic() - started


def assistant(chat: dict[str, Any], message_id: str) -> dict[str, Any]:
    return chat["chat"]["history"]["messages"][message_id]


def done(_chat: dict[str, Any], message: dict[str, Any]) -> bool:
    return bool(message.get("done"))


def chat_rows(stack: Stack, chat_id: str, count: int, *, tasks: bool) -> list[dict[str, Any]]:
    """The chat's finished ledger rows: main turns (`tasks=False`) or background tasks."""

    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if bool(r["task"]) == tasks and r["outcome"] is not None]

    rows = stack.wait_runs(
        lambda rows: len(mine(rows)) >= count, route="chat_completions", session_id=chat_id
    )
    return mine(rows)


def answer_text(stack: Stack, request_id: str) -> str:
    """What bmo streamed for a run, from its `ContentAppended` events (assistant and activity)."""
    return "".join(e["data"]["text"] for e in stack.run_events(request_id) if e["type"] == "ContentAppended")


# --------------------------------------------------------------------------- model picker


def test_model_picker_lists_the_bmo_models(stack: Stack) -> None:
    models = {m["id"]: m for m in stack.webui.models()}
    assert {"bmo/local", "up/fake-model"} <= models.keys(), models.keys()
    assert models["bmo/local"]["openai"]["id"] == "bmo/local"  # the raw object from bmo's /v1/models
    rows = stack.wait_runs(lambda rows: bool(rows), route="models_list")
    served = [r for r in rows if (r["outcome"], r["status_code"]) == ("final_answer", 200)]
    assert served, f"Open WebUI never listed bmo's models: {rows}"
    assert all(r["client_ua"].startswith(AIOHTTP_UA) for r in served)


# --------------------------------------------------------------------------- a streamed bmo/local turn


@pytest.fixture(scope="module")
def list_files(stack: Stack) -> dict[str, Any]:
    """One new chat: "list files" to bmo/local, waiting for the three background tasks too."""
    started = time.monotonic()
    turn = stack.webui.turn("bmo/local", "list files", wait_tasks=list(TASKS))
    timed("scenario: streamed bmo/local turn + background tasks", started)
    assert turn["post_status"] == 200, turn
    assert turn["done"], f"the turn never completed: {turn['events']}"
    return turn


def test_streamed_answer_from_bmo_local_lands_complete_in_the_stored_chat(
    stack: Stack, list_files: dict[str, Any]
) -> None:
    chat_id, message_id = list_files["chat_id"], list_files["assistant_id"]
    chat = stack.webui.wait_chat(chat_id, message_id, done)
    message = assistant(chat, message_id)
    assert message["done"] is True and not message.get("error"), message
    content = message["content"]
    assert "Here are the entries in `.`" in content
    for entry in ("README.md", "src/"):
        assert entry in content
    assert '<details type="tool_calls"' in content and 'name="list_dir"' in content  # tool activity shown
    (row,) = chat_rows(stack, chat_id, 1, tasks=False)
    assert (row["model"], row["stream"], row["outcome"], row["status_code"]) == (
        "bmo/local",
        True,
        "final_answer",
        200,
    )
    assert row["task"] == "" and row["tool_policy"] == "chat_only"
    assert row["client_ua"].startswith(AIOHTTP_UA)
    # trusted proxy: Open WebUI's forwarded X-OpenWebUI-User-* headers name the requester
    requester = json.loads(row["requester"])
    assert requester["email"] == "admin@localhost" and requester["role"] == "admin", requester
    # complete: Open WebUI stored exactly what bmo streamed, nothing cut off
    assert content.strip() == answer_text(stack, row["request_id"]).strip()


def test_background_tasks_give_a_real_title_tags_and_follow_ups(
    stack: Stack, list_files: dict[str, Any]
) -> None:
    chat_id, message_id = list_files["chat_id"], list_files["assistant_id"]
    chat = stack.webui.wait_chat(
        chat_id, message_id, lambda c, m: bool(m.get("followUps")) and bool(c["meta"].get("tags"))
    )
    # Open WebUI falls back to the user's own text ("list files") when the title task fails
    assert chat["title"] == "List files"
    follow_ups = assistant(chat, message_id).get("followUps")
    assert follow_ups and all(isinstance(f, str) and f and f != "list files" for f in follow_ups)
    assert chat["meta"]["tags"]
    rows = chat_rows(stack, chat_id, 3, tasks=True)
    assert sorted(r["task"] for r in rows) == sorted(TASKS)  # recognised by the {{TASK}} header
    for row in rows:
        assert (row["stream"], row["outcome"], row["status_code"], row["model"]) == (
            False,
            "final_answer",
            200,
            "bmo/local",
        )
    title_row = next(r for r in rows if r["task"] == "title_generation")
    assert json.loads(answer_text(stack, title_row["request_id"])) == {"title": "List files"}


# --------------------------------------------------------------------------- sessions


def test_two_turns_of_one_chat_map_to_one_bmo_session(stack: Stack) -> None:
    started = time.monotonic()
    first = stack.webui.turn("bmo/local", "list files", background_tasks={})
    assert first["done"], first
    chat_id = first["chat_id"]
    chat = stack.webui.wait_chat(chat_id, first["assistant_id"], done)
    history = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": assistant(chat, first["assistant_id"])["content"]},
    ]
    second = stack.webui.turn(
        "bmo/local",
        "read README.md",
        chat_id=chat_id,
        parent_id=first["assistant_id"],
        history=history,
        background_tasks={},
    )
    timed("scenario: two turns, one session", started)
    assert second["done"] and second["chat_id"] == chat_id, second
    chat = stack.webui.wait_chat(chat_id, second["assistant_id"], done)
    assert "TODO: write docs" in assistant(chat, second["assistant_id"])["content"]
    assert assistant(chat, second["assistant_id"])["parentId"] in chat["chat"]["history"]["messages"]
    rows = chat_rows(stack, chat_id, 2, tasks=False)  # X-OpenWebUI-Chat-Id → session_id
    assert len(rows) == 2 and {r["session_id"] for r in rows} == {chat_id}
    assert all(r["outcome"] == "final_answer" for r in rows)


# --------------------------------------------------------------------------- tool policies


def test_chat_only_turn_with_builtin_tools_present_returns_plain_text(stack: Stack) -> None:
    assert stack.upstream is not None
    before = len(stack.upstream.requests)
    stack.upstream.script(Text("Plain answer: it is teatime."))
    started = time.monotonic()
    turn = stack.webui.turn("up/fake-model", "What time is it?", background_tasks={})
    timed("scenario: chat_only with builtin tools", started)
    assert turn["done"], turn
    chat = stack.webui.wait_chat(turn["chat_id"], turn["assistant_id"], done)
    message = assistant(chat, turn["assistant_id"])
    assert message["content"] == "Plain answer: it is teatime."
    assert not [o for o in message.get("output", []) if o.get("type", "").startswith("function_call")]
    (sent,) = stack.upstream.requests[before:]
    offered = {t["function"]["name"] for t in sent["body"].get("tools", [])}
    assert "get_current_timestamp" not in offered  # chat_only ignores the client's tools
    (row,) = chat_rows(stack, turn["chat_id"], 1, tasks=False)
    assert (row["outcome"], row["tool_policy"], row["model"]) == (
        "final_answer",
        "chat_only",
        "up/fake-model",
    )


def test_auto_approve_round_trip_through_an_open_webui_builtin_tool(auto_stack: Stack) -> None:
    upstream = auto_stack.upstream
    assert upstream is not None
    upstream.script(
        ToolCalls([("call_ts", "get_current_timestamp", "{}")]),
        Text("The current time came from Open WebUI's own tool."),
    )
    started = time.monotonic()
    turn = auto_stack.webui.turn("up/fake-model", "What is the current timestamp?", wait_tasks=list(TASKS))
    timed("scenario: auto_approve builtin tool round trip", started)
    assert turn["done"], turn
    chat_id = turn["chat_id"]
    chat = auto_stack.webui.wait_chat(chat_id, turn["assistant_id"], done)
    message = assistant(chat, turn["assistant_id"])
    assert "The current time came from Open WebUI's own tool." in message["content"], message
    kinds = [o.get("type") for o in message.get("output", [])]
    assert "function_call" in kinds and "function_call_output" in kinds, message.get("output")
    call = next(o for o in message["output"] if o.get("type") == "function_call")
    assert call["name"] == "get_current_timestamp"
    # the model saw Open WebUI's tools, called one, and got Open WebUI's result back
    first, second = upstream.requests[0]["body"], upstream.requests[1]["body"]
    assert "get_current_timestamp" in {t["function"]["name"] for t in first["tools"]}
    (result,) = [m for m in second["messages"] if m["role"] == "tool"]
    assert result["tool_call_id"] == "call_ts" and "current_timestamp" in result["content"]
    assert len(upstream.requests) == 2  # background tasks went to bmo/local, not the upstream
    rows = chat_rows(auto_stack, chat_id, 2, tasks=False)
    assert len(rows) == 2 and {r["session_id"] for r in rows} == {chat_id}
    assert all(
        (r["outcome"], r["tool_policy"], r["stream"]) == ("final_answer", "auto_approve", True) for r in rows
    )
    # 127.0.0.1 is not a trusted proxy for this bmo: the identity headers were ignored, visibly
    assert all(r["requester"] == "" for r in rows)
    ignored = [e for e in auto_stack.run_events(rows[0]["request_id"]) if e["type"] == "RequesterIgnored"]
    assert ignored and "x-openwebui-user-email" in ignored[0]["data"]["headers"], ignored
    # no {{TASK}} header on this connection: bmo recognised the tasks by their `### Task:` prompt
    task_rows = chat_rows(auto_stack, chat_id, 3, tasks=True)
    assert sorted(r["task"] for r in task_rows) == sorted(TASKS)
    assert chat["title"] != "What is the current timestamp?"


# --------------------------------------------------------------------------- errors


def test_wrong_api_key_shows_a_readable_error_on_the_message(
    wrong_key_webui: OpenWebUI, stack: Stack
) -> None:
    started = time.monotonic()
    turn = wrong_key_webui.turn("bmo/local", "list files", background_tasks={})
    timed("scenario: wrong API key", started)
    assert turn["post_status"] == 200 and turn["done"], turn
    chat = wrong_key_webui.wait_chat(turn["chat_id"], turn["assistant_id"], lambda c, m: bool(m.get("error")))
    error = assistant(chat, turn["assistant_id"]).get("error") or {}
    text = str(error.get("content", ""))
    assert "token" in text.lower() or "api key" in text.lower(), error
    assert "{" not in text and "Traceback" not in text  # the message, not a JSON dump
    rows = stack.wait_runs(
        lambda rows: any(r["outcome"] == "auth_failed" for r in rows), route="chat_completions"
    )
    failed = [r for r in rows if r["outcome"] == "auth_failed"]
    assert failed and failed[0]["status_code"] == 401 and failed[0]["client_ua"].startswith(AIOHTTP_UA)


# --------------------------------------------------------------------------- a real browser


def _kill_browsers(user_data_dir: Path) -> None:
    """Chromium runs in its own process group (Playwright detaches it): end ours by pid."""
    marker = str(user_data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_headless_chromium_smoke(stack: Stack, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "Debian chromium is missing: `apt-get install -y chromium` (.ci/run does it)"
    user_data_dir = tmp_path / "chromium-profile"
    shot = tmp_path / "open-webui-bmo.png"
    started = time.monotonic()
    try:
        result = stack.webui.drive(
            "browser",
            {
                "model": "bmo/local",
                "prompt": "list files",
                "expect": "Here are the entries in",
                "also_wait_for": ["Follow up", "Can you read the README.md file?"],
                "screenshot": str(shot),
                "user_data_dir": str(user_data_dir),
                "executable": str(CHROMIUM),
                "timeout": 90,
            },
            timeout=240,
        )
    finally:
        _kill_browsers(user_data_dir)
    timed("scenario: headless chromium smoke", started)
    text = result["page_text"]
    assert "Here are the entries in" in text and "README.md" in text
    assert shot.stat().st_size > 10_000
    chats = [r for r in stack.runs(route="chat_completions") if r["model"] == "bmo/local" and not r["task"]]
    assert chats and chats[0]["outcome"] == "final_answer" and chats[0]["session_id"]
    if os.environ.get("BMO_UPDATE_SCREENSHOT"):  # refresh docs/img/open-webui-bmo.png
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
