"""The offline `bmo/local` model: intents, final answers, streaming, tasks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from app.agent.tools import builtin_tools
from app.providers.base import (
    ChatMessage,
    ChatProvider,
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSchema,
)
from app.providers.local import LocalProvider, chunk_text
from app.providers.local_rules import plan_reply
from app.providers.local_tasks import answer_task

BASH = ToolSchema(name="bash", description="run a shell command", parameters={"type": "object"})
BUILTIN = tuple(t.schema for t in builtin_tools())
NAMES = frozenset(s.name for s in BUILTIN)


def user(text: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage(role="user", content=text),)


def collect(request: ModelRequest) -> list[ModelEvent]:
    async def go() -> list[ModelEvent]:
        return [event async for event in LocalProvider().stream(request)]

    return asyncio.run(go())


def answer_of(events: Sequence[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def tool_turn(call: ToolCall, result: str, prompt: str = "do it") -> tuple[ChatMessage, ...]:
    return (
        ChatMessage(role="user", content=prompt),
        ChatMessage(role="assistant", tool_calls=(call,)),
        ChatMessage(role="tool", content=result, tool_call_id=call.id),
    )


def test_provider_shape() -> None:
    provider: ChatProvider = LocalProvider()
    assert provider.name == "bmo"
    assert provider.models() == ("local",)
    asyncio.run(provider.aclose())


# --- intents -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tool", "args"),
    [
        ("list files", "list_dir", {"path": "."}),
        ("ls", "list_dir", {"path": "."}),
        ("list the files in src", "list_dir", {"path": "src"}),
        ("what's in docs/", "list_dir", {"path": "docs"}),
        ("Can you please list files?", "list_dir", {"path": "."}),
        ("read README.md", "read_file", {"path": "README.md"}),
        ("show me app/main.py", "read_file", {"path": "app/main.py"}),
        ("cat x", "read_file", {"path": "x"}),
        ("open notes.txt", "read_file", {"path": "notes.txt"}),
        ("what's in app/main.py?", "read_file", {"path": "app/main.py"}),
        ("search for TODO", "search", {"pattern": "TODO"}),
        ("grep foo", "search", {"pattern": "foo"}),
        ("find usages of bar", "search", {"pattern": "bar"}),
        ("where is X defined", "search", {"pattern": "X"}),
        ("search for foo.bar in src", "search", {"pattern": r"foo\.bar", "path": "src"}),
        ("run `pytest -q`", "bash", {"command": "pytest -q"}),
        ("run pytest", "bash", {"command": "pytest"}),
    ],
)
def test_intent_becomes_tool_call(text: str, tool: str, args: dict[str, str]) -> None:
    plan = plan_reply(user(text), NAMES | {"bash"})
    assert plan.tool_call is not None
    assert plan.tool_call.name == tool
    assert json.loads(plan.tool_call.arguments) == args
    assert plan.text == ""


def test_tool_call_id_is_deterministic() -> None:
    first = plan_reply(user("list files"), NAMES).tool_call
    again = plan_reply(user("list files"), NAMES).tool_call
    longer = plan_reply((ChatMessage(role="system", content="s"), *user("list files")), NAMES)
    assert first is not None and again is not None and longer.tool_call is not None
    assert first.id == again.id
    assert first.id.startswith("call_") and len(first.id) == len("call_") + 24
    assert longer.tool_call.id != first.id  # the message count is part of the id


def test_bash_not_offered_is_answered_honestly() -> None:
    plan = plan_reply(user("run `pytest -q`"), NAMES)
    assert plan.tool_call is None
    assert "`bash` tool is not enabled" in plan.text
    assert "pytest -q" in plan.text


def test_tool_not_offered_is_said() -> None:
    plan = plan_reply(user("read README.md"), {"list_dir"})
    assert plan.tool_call is None
    assert "`read_file`" in plan.text and "not offered" in plan.text


def test_greeting_lists_capabilities() -> None:
    text = plan_reply(user("hello!"), NAMES).text
    assert text.startswith("Hi!")
    assert "list files" in text and "read README.md" in text


def test_anything_else_is_honest_and_explains_configuration() -> None:
    text = plan_reply(user("What is the capital of France?"), NAMES).text
    assert "offline rule-based model" in text
    for needle in ("[providers.<name>]", 'type = "openai"', "base_url", "api_key", "models"):
        assert needle in text
    assert "`<name>/<model>`" in text


# --- final answers from tool results -------------------------------------


def test_list_dir_result_answer() -> None:
    call = ToolCall("call_1", "list_dir", '{"path": "src"}')
    text = plan_reply(tool_turn(call, "a.py\npkg/"), NAMES).text
    assert text.startswith("Here are the entries in `src`:")
    assert "a.py\npkg/" in text


def test_read_file_result_answer_fences_with_language() -> None:
    call = ToolCall("call_1", "read_file", '{"path": "app/main.py"}')
    body = "print('hi')\n"
    text = plan_reply(tool_turn(call, body), NAMES).text
    assert text == "Contents of `app/main.py`:\n\n```python\nprint('hi')\n```"


def test_read_file_truncation_note_stays_outside_the_fence() -> None:
    call = ToolCall("call_1", "read_file", '{"path": "a.md"}')
    content = "# A\n```x```\n[truncated: showing lines 1-2 of 9; use offset=2 to read more]"
    text = plan_reply(tool_turn(call, content), NAMES).text
    assert "````markdown\n# A\n```x```\n````" in text
    assert text.endswith("\n\n[truncated: showing lines 1-2 of 9; use offset=2 to read more]")


def test_search_result_answers() -> None:
    call = ToolCall("call_1", "search", '{"pattern": "TODO"}')
    hits = plan_reply(tool_turn(call, "a.py:1: # TODO"), NAMES).text
    assert hits.startswith("Matches for `TODO`:") and "a.py:1: # TODO" in hits
    none = plan_reply(tool_turn(call, "no matches for 'TODO'"), NAMES).text
    assert none.startswith("No matches for `TODO`")


def test_bash_result_answer() -> None:
    call = ToolCall("call_1", "bash", '{"command": "pytest -q"}')
    text = plan_reply(tool_turn(call, "exit code: 1\n1 failed"), NAMES | {"bash"}).text
    assert text.startswith("Ran `pytest -q` (exit status 1):")
    assert "```\nexit code: 1\n1 failed\n```" in text


def test_error_result_says_the_tool_failed() -> None:
    call = ToolCall("call_1", "read_file", '{"path": "../x"}')
    text = plan_reply(tool_turn(call, "error: path '../x' is outside the workspace"), NAMES).text
    assert text.startswith("The `read_file` tool failed:")
    assert "> error: path '../x' is outside the workspace" in text


def test_tool_result_matched_by_id_among_several_calls() -> None:
    first = ToolCall("call_a", "search", '{"pattern": "x"}')
    second = ToolCall("call_b", "list_dir", '{"path": "docs"}')
    messages = (
        *user("go"),
        ChatMessage(role="assistant", tool_calls=(first, second)),
        ChatMessage(role="tool", content="a.md", tool_call_id="call_b"),
    )
    assert plan_reply(messages, NAMES).text.startswith("Here are the entries in `docs`:")


# --- streaming -----------------------------------------------------------


def test_tool_call_stream() -> None:
    events = collect(ModelRequest(model="local", messages=user("list files"), tools=BUILTIN))
    assert len(events) == 2
    requested, finished = events
    assert isinstance(requested, ToolCallRequested)
    assert requested.call.name == "list_dir"
    assert isinstance(finished, ModelFinished) and finished.finish_reason == "tool_calls"


def test_text_stream_concatenates_to_the_answer_and_finishes_once() -> None:
    messages = user("what is love?")
    events = collect(ModelRequest(model="local", messages=messages, tools=BUILTIN))
    expected = plan_reply(messages, NAMES).text
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 3
    assert answer_of(events) == expected
    finished = [e for e in events if isinstance(e, ModelFinished)]
    assert len(finished) == 1 and events[-1] is finished[0]
    assert finished[0].finish_reason == "stop"
    assert finished[0].usage.prompt_tokens == 4  # ceil(13 / 4)
    assert finished[0].usage.completion_tokens == -(-len(expected) // 4)


def test_tool_result_turn_streams_final_answer() -> None:
    call = ToolCall("call_1", "list_dir", '{"path": "."}')
    events = collect(ModelRequest(model="local", messages=tool_turn(call, "README.md")))
    assert answer_of(events).startswith("Here are the entries in `.`:")
    assert isinstance(events[-1], ModelFinished) and events[-1].finish_reason == "stop"


def test_max_tokens_truncates_with_length() -> None:
    events = collect(ModelRequest(model="local", messages=user("hi"), max_tokens=5))
    assert answer_of(events) == plan_reply(user("hi"), ()).text[:20]
    finished = events[-1]
    assert isinstance(finished, ModelFinished)
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 5


@pytest.mark.parametrize("text", ["", "one", "  lead and trail  ", "a\n\nb  c\td " * 7])
def test_chunk_text_preserves_text(text: str) -> None:
    assert "".join(chunk_text(text)) == text


# --- Open WebUI background tasks -----------------------------------------

HISTORY = "<chat_history>\nUSER: list the files in src please\nASSISTANT: Here are...\n</chat_history>"


def task(instructions: str, output: str) -> str:
    return f"### Task:\n{instructions}\n### Output:\nJSON format: {output}\n### Chat History:\n{HISTORY}"


@pytest.mark.parametrize(
    ("prompt", "key"),
    [
        (task("Generate a concise, 3-5 word title with an emoji.", '{"title": "."}'), "title"),
        (task("Generate 1-3 broad tags categorizing the main themes.", '{"tags": []}'), "tags"),
        (task("Suggest follow-up questions to help continue.", '{"follow_ups": []}'), "follow_ups"),
        (task("Analyze the chat to generate search queries.", '{"queries": []}'), "queries"),
        (task("You are an autocompletion system. Continue the text.", '{"text": ""}'), "text"),
        (task("Generate a detailed prompt for an image.", '{"prompt": ""}'), "prompt"),
        (task("Do something new.", "{}"), "text"),
    ],
)
def test_task_answers_are_json_with_expected_key(prompt: str, key: str) -> None:
    value = json.loads(answer_task(prompt))
    assert list(value) == [key]


def test_task_title_comes_from_first_user_line() -> None:
    prompt = task("Generate a concise, 3-5 word title.", '{ "title": "..." }')
    title = json.loads(answer_task(prompt))["title"]
    assert title == "List the files in src please"
    assert 3 <= len(title.split()) <= 6


def test_task_tags_and_queries_content() -> None:
    tags = json.loads(answer_task(task("Generate 1-3 broad tags.", '{"tags": []}')))["tags"]
    assert tags[0] == "General"
    queries = json.loads(answer_task(task("Generate search queries.", '{"queries": []}')))
    assert queries["queries"] == ["list the files in src please"]


def test_task_prompt_goes_through_the_provider() -> None:
    prompt = task("Generate a concise, 3-5 word title.", '{ "title": "..." }')
    events = collect(ModelRequest(model="local", messages=user(prompt), tools=BUILTIN))
    assert json.loads(answer_of(events)) == {"title": "List the files in src please"}
    assert not any(isinstance(e, ToolCallRequested) for e in events)
