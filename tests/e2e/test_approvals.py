"""Approvals cover exactly what runs: a real `bmo serve`, the scripted upstream choosing the tool calls.

The class guarded here: whatever the tool, the argument length or the characters
in it (control characters, long whitespace runs, bidi and zero-width tricks),
the question shows the complete arguments, the decision is bound to their
sha256 digest, and the tool runs with exactly those arguments.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


def config(upstream: FakeOpenAI, *, timeout_s: float = 30, extra: str = "", mcp: bool = False) -> str:
    text = (
        f'[options.openai_compat]\ntool_policy = "chat_only"\npermission_timeout_s = {timeout_s}\n{extra}\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-up"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 10\n'
    )
    if mcp:
        text += (
            '\n[mcp.fake]\ntype = "stdio"\ncommand = "python"\n'
            'args = ["-m", "tests.fakes.mcp_server"]\ntimeout = 10\nenv = { PYTHONPATH = "${PYTHONPATH}" }\n'
        )
    return text


def digest_of(tool: str, arguments: str) -> str:
    """The documented digest: sha256 over the tool name, a newline and the canonical arguments."""
    return hashlib.sha256(f"{tool}\n{arguments}".encode("utf-8", "surrogatepass")).hexdigest()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # surfaced by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def chat(server: BmoServer, text: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.token, max_retries=0, timeout=90)
    return client.chat.completions.with_raw_response.create(
        model="up/fake-model", messages=[{"role": "user", "content": text}], **kw
    )


def next_question(server: BmoServer, seen: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = httpx.get(server.base_url + "/v1/permissions", headers=server.headers).json()["data"]
        fresh = [q for q in pending if q["question_id"] not in seen]
        if fresh:
            seen.add(fresh[0]["question_id"])
            return fresh[0]
        time.sleep(0.05)
    raise AssertionError("no new permission question appeared")


def run_events(server: BmoServer, request_id: str, until: str = "Finished") -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        events = httpx.get(
            f"{server.base_url}/v1/openai-compat/runs/{request_id}/events", headers=server.headers
        ).json()["data"]
        if any(e["type"] == until for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def decide(server: BmoServer, question_id: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/permissions/{question_id}", json=body, headers={**server.headers, **headers}
    )


INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


def assert_visible(display: str) -> None:
    """No character that a terminal would hide or reinterpret, and no long blank run."""
    hidden = [c for c in display if unicodedata.category(c) in INVISIBLE and c != "\n"]
    assert not hidden, f"invisible characters in the display: {hidden!r}"
    assert " " * 9 not in display, "a long run of spaces is shown raw"


def test_what_is_shown_is_what_runs_for_every_tool_kind(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside-marker"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("bash", {"command": "echo harmless" + " " * 2100 + f"; touch {outside}; echo tail-ran"}),
        (
            "write_file",
            {
                "path": "notes/long.txt",
                "content": "A" * 30_000 + "\x1b[2J\x07\u202egnp.exe\u200b" + "\t" * 40 + "END-MARKER",
            },
        ),
        (
            "edit_file",
            {
                "path": "src/main.py",
                "old_string": "return 42",
                "new_string": "return 43\u2028" + " " * 500 + "#\u200bx",
            },
        ),
        ("mcp__fake__write_note", {"text": "n" * 5000 + "\r\x00" + "\u3000" * 30 + "tail"}),
    ]
    server = make_server(config_text=config(upstream, mcp=True))
    upstream.script(
        *(ToolCalls([(f"c{i}", tool, json.dumps(args))]) for i, (tool, args) in enumerate(calls)),
        Text("All done."),
    )
    thread, out = in_thread(lambda: chat(server, "do the four things"))
    seen: set[str] = set()
    asked: list[dict[str, Any]] = []
    for tool, args in calls:
        question = next_question(server, seen)
        assert question["tool"] == tool
        assert json.loads(question["arguments"]) == args  # complete: nothing cut, nothing added
        assert question["arguments_truncated"] is False
        assert question["arguments_digest"] == digest_of(tool, question["arguments"])
        assert_visible(question["arguments_display"])
        # a decision bound to another digest is refused and decides nothing
        wrong = decide(server, question["question_id"], {"decision": "allow", "digest": "0" * 64})
        assert wrong.status_code == 409, wrong.text
        assert wrong.json()["error"]["code"] == "digest_mismatch"
        assert question["question_id"] in {
            q["question_id"]
            for q in httpx.get(server.base_url + "/v1/permissions", headers=server.headers).json()["data"]
        }
        right = decide(
            server, question["question_id"], {"decision": "allow", "digest": question["arguments_digest"]}
        )
        assert right.status_code == 200, right.text
        assert right.json()["status"] == "allowed"
        asked.append(question)
    thread.join(60)
    assert "error" not in out, out.get("error")
    raw = out["value"]
    assert raw.parse().choices[0].message.content.endswith("All done.")
    # what ran is what was shown
    assert outside.exists()
    assert "tail-ran" in upstream.requests[1]["body"]["messages"][-1]["content"]
    assert (workspace / "notes" / "long.txt").read_text() == calls[1][1]["content"]
    assert calls[2][1]["new_string"] in (workspace / "src" / "main.py").read_text()
    assert upstream.requests[4]["body"]["messages"][-1]["content"] == "noted: " + calls[3][1]["text"]
    # the run's timeline carries the full arguments and the digest each decision approved
    request_id = raw.headers["x-request-id"]
    events = run_events(server, request_id)
    asked_events = [e["data"] for e in events if e["type"] == "PermissionAsked"]
    decided = [e["data"] for e in events if e["type"] == "PermissionDecided"]
    assert [a["arguments"] for a in asked_events] == [q["arguments"] for q in asked]
    assert [d["digest"] for d in decided] == [q["arguments_digest"] for q in asked]
    assert {d["decided_via"] for d in decided} == {"http"}
    # `bmo runs events` shows the same, with a visible rendering for a terminal
    printed = subprocess.run(
        [sys.executable, "-m", "app", "runs", "events", request_id],
        env={**server.env()},
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines() if line.startswith("{")]
    cli_asked = [e["data"] for e in lines if e["type"] == "PermissionAsked"]
    assert [a["arguments"] for a in cli_asked] == [q["arguments"] for q in asked]
    for shown in cli_asked:
        assert_visible(shown["arguments_display"])
    assert "touch" in cli_asked[0]["arguments_display"] and "2100 spaces" in cli_asked[0]["arguments_display"]


def test_a_decision_from_a_trusted_proxy_records_the_requester(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(
        config_text=config(upstream), extra_env={"BMO_REQUESTER_TRUSTED_PROXIES": "127.0.0.1/32,::1/128"}
    )
    upstream.script(ToolCalls([("c", "bash", '{"command": "echo hi > made.txt"}')]), Text("Made."))
    thread, out = in_thread(lambda: chat(server, "create made.txt with bash"))
    question = next_question(server, set())
    answered = decide(
        server, question["question_id"], {"decision": "allow"}, **{"X-Auth-Request-User": "alice"}
    )
    assert answered.status_code == 200, answered.text
    assert "alice" in answered.json()["requester"]
    thread.join(60)
    assert (workspace / "made.txt").exists()
    events = run_events(server, out["value"].headers["x-request-id"])
    (decided,) = [e["data"] for e in events if e["type"] == "PermissionDecided"]
    assert json.loads(decided["requester"]) == {"user": "alice"}
    assert decided["decided_via"] == "http" and decided["digest"] == question["arguments_digest"]


def test_after_deny_the_chat_shows_a_short_line_and_the_model_gets_the_instruction(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    server = make_server(config_text=config(upstream))
    upstream.script(ToolCalls([("c", "bash", '{"command": "touch nope.txt"}')]), Text("I was not allowed."))
    thread, out = in_thread(lambda: chat(server, "touch nope.txt", stream=True))
    question = next_question(server, set())
    assert decide(server, question["question_id"], {"decision": "deny"}).status_code == 200
    thread.join(60)
    stream = out["value"].parse()
    content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert content.endswith("I was not allowed.")
    assert not (workspace / "nope.txt").exists()
    assert "Do not retry" not in content and "tell the user" not in content
    assert "not run" in content.lower() and "denied" in content.lower()
    to_model = upstream.requests[1]["body"]["messages"][-1]["content"]
    assert "permission denied" in to_model and "Do not retry" in to_model


def test_the_digest_formula_is_stable_for_reordered_keys(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    """Duplicate keys collapse to what the tool would decode: the shown text is what runs."""
    server = make_server(config_text=config(upstream))
    sneaky = '{"path": "a.txt", "content": "shown", "content": "runs"}'
    upstream.script(ToolCalls([("c", "write_file", sneaky)]), Text("ok"))
    thread, _ = in_thread(lambda: chat(server, "write"))
    question = next_question(server, set())
    assert json.loads(question["arguments"]) == {"path": "a.txt", "content": "runs"}
    assert '"shown"' not in question["arguments"]
    decide(server, question["question_id"], {"decision": "allow", "digest": question["arguments_digest"]})
    thread.join(60)
    assert (workspace / "a.txt").read_text() == "runs"


@pytest.mark.parametrize("body", [{"decision": "allow", "digest": "xyz"}, {"decision": "allow", "digest": 5}])
def test_a_malformed_digest_is_a_400(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, body: dict[str, Any]
) -> None:
    server = make_server(config_text=config(upstream))
    answered = decide(server, "0" * 32, body)
    assert answered.status_code == 400 and "digest" in answered.json()["error"]["message"]
