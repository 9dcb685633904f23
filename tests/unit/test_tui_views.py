"""`bmo tui` pure pieces: report lines, sidebar labels, runs, timeline, answers, slash parsing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.projections.posture import label
from app.tui import views
from app.tui.client import ChatDelta, ChatDone, _chat_events, normalize_base_url
from app.tui.commands import Command, Prompt, Unknown, parse_input

POSTURE: dict[str, Any] = {
    "enabled": True,
    "tool_policy": "chat_only",
    "ambiguity_action": "ask",
    "model_override_policy": "reject",
    "advertised_models": ["bmo/local", "ollama/qwen2.5-coder:7b"],
    "label": "enabled (chat_only)",
    "ledger": {"runs": 42, "capacity": 10000, "degraded": False, "last_persist_error": None},
    "routes": {"chat_completions": 30, "models_list": 7, "posture": 5},
    "top_user_agents": [
        {"user_agent": "Python/3.11 aiohttp/3.11.18", "count": 30},
        {"user_agent": "bmo-tui/0.1.0", "count": 9},
        {"user_agent": "curl/8.5.0", "count": 2},
        {"user_agent": "openai/python 1.99", "count": 1},
        {"user_agent": "x" * 200, "count": 1},
    ],
    "recent_outcomes": [
        {"request_id": "157dede7492b40acab9caebf8f8441b5", "elapsed_ms": 1653.6, "outcome": "final_answer"},
        {"request_id": "a0e917a282d242b4b1c82442c133e7a6", "elapsed_ms": 3.4, "outcome": "clarification"},
        {"request_id": "8d869b51d25b49a3ae5bbfaa58a8505b", "elapsed_ms": 12.0, "outcome": "queued"},
        {"request_id": "099475c1fa40440baf0453e9b0b9aa04", "elapsed_ms": 0.9, "outcome": "auth_failed"},
        {"request_id": "3e81eab89417431b8d85d44518b78d21", "elapsed_ms": 30001.0, "outcome": "error_500"},
    ],
    "bind": {"addr": "127.0.0.1:9000", "loopback": True, "auth": True},
}


def posture(**changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(POSTURE)
    ledger = changes.pop("ledger", None)
    p.update(changes)
    if ledger:
        p["ledger"].update(ledger)
    return p


def test_report_has_every_spec_fact() -> None:
    text = "\n".join(views.posture_lines(POSTURE))
    assert "enabled: yes" in text
    assert "tool_policy: chat_only" in text
    assert "ambiguity_action: ask" in text
    assert "model_override_policy: reject" in text
    assert "advertised models: bmo/local, ollama/qwen2.5-coder:7b" in text
    assert "ledger: 42 / 10000 runs" in text
    assert "routes: chat_completions=30  models_list=7  posture=5" in text
    assert "Python/3.11 aiohttp/3.11.18" in text
    assert "bind: 127.0.0.1:9000 (loopback, auth on)" in text
    assert "DEGRADED" not in text


def test_report_outcomes_have_truncated_id_badge_and_outcome() -> None:
    lines = views.posture_lines(POSTURE)
    start = lines.index("last 5 outcomes:")
    outcomes = lines[start + 1 :]
    assert outcomes == [
        "  157dede7…  [  1654 ms]  final_answer",
        "  a0e917a2…  [     3 ms]  clarification",
        "  8d869b51…  [    12 ms]  queued",
        "  099475c1…  [     1 ms]  auth_failed",
        "  3e81eab8…  [ 30001 ms]  error_500",
    ]


def test_report_top_user_agents_are_five_and_clipped() -> None:
    lines = views.posture_lines(POSTURE)
    start = lines.index("top User-Agents:")
    agents = lines[start + 1 : lines.index("last 5 outcomes:")]
    assert len(agents) == 5
    assert agents[0] == "      30  Python/3.11 aiohttp/3.11.18"
    assert all(len(line) <= 80 for line in agents)
    assert agents[-1].endswith("…")


def test_report_sticky_degraded_warning_comes_first() -> None:
    lines = views.posture_lines(posture(ledger={"degraded": True, "last_persist_error": "disk I/O error"}))
    assert lines[1] == views.DEGRADED_WARNING
    assert "last error: disk I/O error" in lines[2]


def test_report_empty_server() -> None:
    text = "\n".join(
        views.posture_lines(posture(routes={}, top_user_agents=[], recent_outcomes=[], advertised_models=[]))
    )
    assert "routes: (none yet)" in text
    assert "advertised models: (none)" in text
    assert text.count("(none yet)") == 3


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"enabled": False}, "disabled"),
        ({}, "enabled (chat_only)"),
        ({"tool_policy": "auto_approve"}, "enabled (auto_approve)"),
        ({"ledger": {"degraded": True}}, "degraded — persist failures"),
        ({"enabled": False, "ledger": {"degraded": True}}, "degraded — persist failures"),
    ],
)
def test_sidebar_label_four_states(changes: dict[str, Any], expected: str) -> None:
    p = posture(**changes)
    assert views.sidebar_label(p) == expected
    p_ledger = p["ledger"]
    assert expected == label(
        enabled=p["enabled"], tool_policy=p["tool_policy"], degraded=p_ledger["degraded"]
    )
    lines = views.sidebar_lines(p, server="http://x", session_id="tui-1", pending=0, activity="idle")
    assert lines[0] == f"OpenAI compat: {expected}"


def test_sidebar_label_before_first_posture() -> None:
    assert views.sidebar_label(None) == "unknown (no posture yet)"


RUNS = [
    {
        "request_id": "157dede7492b40acab9caebf8f8441b5",
        "session_id": "tui-abc",
        "route": "chat_completions",
        "started_at": "2026-11-25T21:15:25.448056+00:00",
        "elapsed_ms": 1653.6,
        "outcome": "final_answer",
    },
    {
        "request_id": "2a2f5e18ec5d42b1a48c624456f686dc",
        "session_id": "",
        "route": "chat_completions",
        "started_at": "2026-11-25T21:15:27.000000+00:00",
        "elapsed_ms": None,
        "outcome": None,
    },
]


def test_runs_lines() -> None:
    lines = views.runs_lines(RUNS)
    assert lines[0] == " 1 21:15:25 157dede7… final_answer     [  1654 ms] tui-abc"
    assert lines[1] == " 2 21:15:27 2a2f5e18… (open)           [  running]"
    assert views.runs_lines([]) == ["(no runs yet)"]
    assert "chat_completions" in views.runs_lines(RUNS, show_route=True)[0]


def test_ledger_lines_tally_outcomes() -> None:
    lines = views.ledger_lines(POSTURE, RUNS)
    assert "size: 42 / 10000 runs (oldest pruned)" in lines
    assert "newest 2: (open)=1  final_answer=1" in lines


def event(version: int, kind: str, at_ms: int, **data: Any) -> dict[str, Any]:
    seconds, ms = divmod(at_ms, 1000)
    return {
        "version": version,
        "type": kind,
        "at": f"2026-11-25T21:15:{25 + seconds:02d}.{ms:03d}+00:00",
        "data": data,
    }


EVENTS = [
    event(1, "Fired", 0, route="chat_completions", model="bmo/local", stream=True),
    event(2, "Started", 3, model="bmo/local", message_count=1),
    event(
        3,
        "ModelCalled",
        5,
        model="bmo/local",
        step=1,
        prompt_tokens=10,
        completion_tokens=5,
        finish_reason="tool_calls",
    ),
    event(4, "PermissionAsked", 10, tool="bash", arguments='{"command": "echo hi"}'),
    event(5, "PermissionDecided", 1500, decision="allow", decided_by="operator"),
    event(6, "ToolCalled", 1520, name="bash", ok=True, duration_ms=12.04),
    event(7, "ContentAppended", 1600, text="hi there", role="assistant"),
    event(8, "Finished", 1654, outcome="final_answer", status_code=200, elapsed_ms=1653.6),
]


def test_timeline_lines() -> None:
    lines = views.timeline_lines(EVENTS, request_id="157dede7492b40acab9caebf8f8441b5")
    assert lines[0].startswith("Run 157dede7492b… — event timeline")
    assert lines[1] == "     +0 ms  Fired             chat_completions model=bmo/local stream=True"
    assert lines[3] == "     +5 ms  ModelCalled       step 1 bmo/local 10+5 tok → tool_calls"
    assert lines[4] == '    +10 ms  PermissionAsked   bash {"command": "echo hi"}'
    assert lines[5] == "  +1500 ms  PermissionDecided allow by operator"
    assert lines[6] == "  +1520 ms  ToolCalled        bash ok 12.0 ms"
    assert lines[7] == "  +1600 ms  ContentAppended   8 chars (assistant)"
    assert lines[8] == "  +1654 ms  Finished          final_answer 200 [  1654 ms]"
    assert views.timeline_lines([], request_id="x")[1] == "(no events)"


def test_question_lines() -> None:
    q = {
        "question_id": "0b2f5aa0a1df41deace88498de865ca7",
        "request_id": "157dede7492b40acab9caebf8f8441b5",
        "tool": "bash",
        "arguments": '{"command": "echo hi"}',
        "expires_at": "2026-11-25T21:17:25.448049+00:00",
    }
    assert views.question_lines(q, 1) == [
        "[1] bash wants to run (run 157dede7…, expires 21:17:25)",
        "    {",
        '      "command": "echo hi"',
        "    }",
        "    (no digest)",
    ]


def test_question_lines_show_everything_and_hide_nothing() -> None:
    """A long, obfuscated command is shown complete, with invisibles escaped and blank runs counted."""
    tail = "; touch /tmp/x\u202e\u200b\x1b[2J; echo $BMO_AUTH_TOKEN"
    command = "echo harmless" + " " * 2100 + tail + "y" * 5000
    q = {
        "question_id": "q",
        "request_id": "r",
        "tool": "bash",
        "session_id": "chat-1",
        "arguments": json.dumps({"command": command}, ensure_ascii=False),
        "arguments_digest": "ab" * 32,
        "expires_at": "",
    }
    text = "\n".join(views.question_lines(q, 1))
    assert "⟪2100 spaces⟫; touch /tmp/x\\u202e\\u200b\\u001b[2J; echo $BMO_AUTH_TOKEN" in text
    assert "y" * 5000 in text and "session chat-1" in text and "sha256 abababab" in text
    assert not any(ch in text for ch in "\u202e\u200b\x1b")


DETAILS = (
    '<details type="tool_calls" done="true" id="call_1" name="list_dir" '
    'arguments="{&quot;path&quot;: &quot;.&quot;}" result="&quot;README.md\\nsrc/&quot;">\n'
    "<summary>Tool Executed</summary>\n</details>\n"
)


def test_answer_segments_turn_details_into_tool_lines() -> None:
    segments = views.answer_segments(DETAILS + "Here are the entries")
    assert segments == [
        views.Segment("tool", '⚙ list_dir {"path": "."} → README.md src/'),
        views.Segment("text", "Here are the entries"),
    ]


@pytest.mark.parametrize("cut", [1, 5, 20, len(DETAILS) - 3])
def test_answer_segments_hold_back_a_partial_block(cut: int) -> None:
    segments = views.answer_segments("Before " + DETAILS[:cut])
    assert segments == [views.Segment("text", "Before ")]


def test_chat_events_from_sse_lines() -> None:
    lines = [
        'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}',
        "",
        ": keep-alive",
        'data: {"choices": [{"delta": {"content": "hel"}}]}',
        'data: {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}',
        "data: [DONE]",
    ]
    assert list(_chat_events(iter(lines))) == [ChatDelta("hel"), ChatDelta("lo"), ChatDone("stop")]


def test_chat_stream_error_chunk_raises() -> None:
    from app.tui.client import ApiError

    lines = ['data: {"error": {"message": "upstream died", "code": "bad_gateway"}}', "data: [DONE]"]
    with pytest.raises(ApiError, match="upstream died"):
        list(_chat_events(iter(lines)))


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000"),
        ("127.0.0.1:9000/v1/", "http://127.0.0.1:9000"),
    ],
)
def test_base_url_normalized(url: str, base: str) -> None:
    assert normalize_base_url(url) == base


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/openai-compat", Command("posture")),
        ("/openwebui", Command("posture")),
        ("/OpenWebUI", Command("posture")),
        ("/run-ledger", Command("ledger")),
        ("/ledger", Command("ledger")),
        ("/runs 2", Command("runs", ("2",))),
        ("/questions allow 1", Command("questions", ("allow", "1"))),
        ("/help", Command("help")),
        ("/quit", Command("quit")),
        ("  list files ", Prompt("list files")),
        ("//etc is a path", Prompt("/etc is a path")),
        ("   ", None),
    ],
)
def test_parse_input(typed: str, expected: object) -> None:
    assert parse_input(typed) == expected


def test_unknown_slash_is_a_helpful_message() -> None:
    parsed = parse_input("/questons")
    assert isinstance(parsed, Unknown)
    assert "did you mean /questions?" in parsed.message
    assert "/help" in parsed.message
    bare = parse_input("/")
    assert isinstance(bare, Unknown)


def test_a_question_names_the_session_that_asked() -> None:
    base = {
        "tool": "bash",
        "request_id": "157dede7492b4f",
        "expires_at": "2026-01-01T21:17:25",
        "arguments": "",
    }
    assert "(session owui-1, run 157dede7…" in views.question_lines({**base, "session_id": "owui-1"}, 1)[0]
    assert "(no session (a one-off request), run" in views.question_lines({**base, "session_id": ""}, 1)[0]
    assert "(run 157dede7…" in views.question_lines(base, 1)[0]  # not looked up yet
