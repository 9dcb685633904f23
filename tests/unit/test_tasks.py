"""Open WebUI background tasks: detection and the JSON answers Open WebUI parses."""

from __future__ import annotations

import json

import pytest

from app.agent.tasks import TASK_KINDS, detect_task, normalize_task_answer, task_messages
from app.providers.base import ChatMessage
from tests.data.openwebui_tasks import (  # Open WebUI 0.12.x default templates, verbatim
    AUTOCOMPLETE_PROMPT,
    FOLLOW_UP_PROMPT,
    IMAGE_PROMPT,
    QUERY_PROMPT,
    TAGS_PROMPT,
    TITLE_PROMPT,
)


def only_user(text: str) -> list[ChatMessage]:
    return [ChatMessage("user", text)]


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_header_value_wins(kind: str) -> None:
    chat = [ChatMessage("user", "hello")]
    assert detect_task(header_value=kind, stream=True, messages=chat) == kind
    assert detect_task(header_value=kind, stream=False, messages=only_user(TAGS_PROMPT)) == kind


def test_unknown_header_value() -> None:
    assert detect_task(header_value="something_else", stream=True, messages=only_user("hi")) == "unknown_task"


@pytest.mark.parametrize("header", ["", "   ", None])
def test_empty_header_falls_through_to_body_detection(header: str | None) -> None:
    assert detect_task(header_value=header, stream=False, messages=only_user(TITLE_PROMPT)) == (
        "title_generation"
    )
    assert detect_task(header_value=header, stream=True, messages=only_user(TITLE_PROMPT)) is None
    assert detect_task(header_value=header, stream=False, messages=only_user("hello")) is None


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        (TITLE_PROMPT, "title_generation"),
        (TAGS_PROMPT, "tags_generation"),
        (FOLLOW_UP_PROMPT, "follow_up_generation"),
        (QUERY_PROMPT, "query_generation"),
        (AUTOCOMPLETE_PROMPT, "autocomplete_generation"),
        (IMAGE_PROMPT, "image_prompt_generation"),
    ],
)
def test_body_detection_of_default_templates(prompt: str, kind: str) -> None:
    assert detect_task(header_value=None, stream=False, messages=only_user(prompt)) == kind
    assert detect_task(header_value=None, stream=False, messages=only_user("\n  " + prompt)) == kind
    system = ChatMessage("system", "You are bmo.")
    assert detect_task(header_value="", stream=False, messages=[system, ChatMessage("user", prompt)]) == kind


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        ("### Task:\nGenerate a title for: USER: hi", "title_generation"),
        ("### Task:\nSuggest follow-up questions to help continue.", "follow_up_generation"),
        ("### Task:\nGenerate retrieval queries for the knowledge base.", "query_generation"),
        ("### Task:\nPick an emoji for the message.", "emoji_generation"),
        ("### Task:\nTranslate the chat into French.", "unknown_task"),
        ('### Task:\nDo the thing.\n### Output:\n{"tags": []}', "tags_generation"),
    ],
)
def test_body_detection_of_custom_templates(prompt: str, kind: str) -> None:
    assert detect_task(header_value=None, stream=False, messages=only_user(prompt)) == kind


def test_streaming_task_body_is_not_a_task() -> None:
    assert detect_task(header_value=None, stream=True, messages=only_user(TITLE_PROMPT)) is None
    assert detect_task(header_value="", stream=True, messages=only_user(FOLLOW_UP_PROMPT)) is None
    assert (
        detect_task(header_value="title_generation", stream=True, messages=only_user(TITLE_PROMPT))
        == "title_generation"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [ChatMessage("user", "hello")],
        [ChatMessage("user", "Explain ### Task: headers in markdown")],
        [ChatMessage("user", TITLE_PROMPT), ChatMessage("assistant", "ok"), ChatMessage("user", "again")],
        [ChatMessage("user", TITLE_PROMPT), ChatMessage("user", "second")],
        [ChatMessage("system", TITLE_PROMPT), ChatMessage("user", "hi")],
        [],
    ],
)
def test_normal_chat_is_not_a_task(messages: list[ChatMessage]) -> None:
    assert detect_task(header_value=None, stream=False, messages=messages) is None


def test_task_messages_are_the_request_messages() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", TITLE_PROMPT)]
    assert task_messages(messages) == tuple(messages)


# --------------------------------------------------------------------------- answers


def parsed(kind: str, text: str) -> dict[str, object]:
    value = json.loads(normalize_task_answer(kind, text))
    assert isinstance(value, dict)
    assert len(value) == 1
    return value


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ('{"title": "Parser Test Fix"}', "Parser Test Fix"),
        ('Sure! Here it is: { "title": "Parser Test Fix" } Hope that helps.', "Parser Test Fix"),
        ('```json\n{"title": "Parser Test Fix"}\n```', "Parser Test Fix"),
        ('<think>hmm</think>\n{"title": "Parser Test Fix"}', "Parser Test Fix"),
        ('"Parser Test Fix"', "Parser Test Fix"),
        ("**Title:** Parser Test Fix\nThe chat is about tests.", "Parser Test Fix"),
        ("# Parser Test Fix", "Parser Test Fix"),
        ("{'title': 'Parser Test Fix'}", "Parser Test Fix"),
        ('{"title": "Parser Test Fix",}', "Parser Test Fix"),
        ("", "New Chat"),
        ('{"title": 42}', "42"),
        ('{"title": ["a"]}', "New Chat"),
        ('{"name": "Parser Test Fix"}', "Parser Test Fix"),
    ],
)
def test_title_answers(text: str, title: str) -> None:
    assert parsed("title_generation", text) == {"title": title}


def test_long_title_is_cut() -> None:
    value = parsed("title_generation", "word " * 50)["title"]
    assert isinstance(value, str)
    assert 0 < len(value) <= 80
    assert not value.endswith(" ")


def test_title_accepts_short_kind_and_keeps_unicode() -> None:
    text = normalize_task_answer("title", '{"title": "Café ☕ Notes"}')
    assert text == '{"title":"Café ☕ Notes"}'


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ('{"tags": ["Technology", "Programming"]}', ["Technology", "Programming"]),
        ('Here you go:\n```json\n{ "tags": ["Technology", "Testing"] }\n```', ["Technology", "Testing"]),
        ("Technology, Programming, Python", ["Technology", "Programming", "Python"]),
        ("- Technology\n- #Testing\n", ["Technology", "Testing"]),
        ('{"tags": ["A", 3, null, {"x": 1}, ""]}', ["A", "3"]),
        ('{"tags": ["Technology", "Python",]}', ["Technology", "Python"]),
        ("", []),
        ("I am sorry but I cannot categorise this conversation for you today.", []),
    ],
)
def test_tags_answers(text: str, tags: list[str]) -> None:
    assert parsed("tags_generation", text) == {"tags": tags}


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ('{"follow_ups": ["Why?", "How?"]}', ["Why?", "How?"]),
        ('Sure: {"follow_ups": ["Why?", "How?"]} done', ["Why?", "How?"]),
        ('```json\n{"follow_ups": ["Why?"]}\n```', ["Why?"]),
        ("Here are some questions:\n1. Why?\n2) How?\n- Where?\n\n", ["Why?", "How?", "Where?"]),
        ('{"follow_ups": "Why?\\nHow?"}', ["Why?", "How?"]),
        ('{"questions": ["Why?", "How?"]}', ["Why?", "How?"]),
        ('{"follow_ups": null}', []),
        ("", []),
    ],
)
def test_follow_up_answers(text: str, items: list[str]) -> None:
    assert parsed("follow_up_generation", text) == {"follow_ups": items}


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ('{"queries": ["python parser tests"]}', ["python parser tests"]),
        ('{ "queries": [] }', []),
        ('Queries: {"queries": ["a", "b"]}', ["a", "b"]),
        ('```\n{"queries": ["a"]}\n```', ["a"]),
        ("* python parser\n* pytest fixtures", ["python parser", "pytest fixtures"]),
        ('{"queries": ["a", "b"', ["a", "b"]),
        ("", []),
    ],
)
def test_query_answers(text: str, items: list[str]) -> None:
    assert parsed("query_generation", text) == {"queries": items}


@pytest.mark.parametrize(
    ("text", "completion"),
    [
        ('{ "text": "with vibrant shades of orange." }', "with vibrant shades of orange."),
        ('Output: {"text": "New York City"}', "New York City"),
        ('```json\n{"text": "abc"}\n```', "abc"),
        ("with vibrant shades", "with vibrant shades"),
        ('{"text": ""}', ""),
        ("", ""),
    ],
)
def test_autocomplete_answers(text: str, completion: str) -> None:
    assert parsed("autocomplete_generation", text) == {"text": completion}


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ('{"prompt": "A red fox at dusk"}', "A red fox at dusk"),
        ('Strictly: ```json\n{\n  "prompt": "A red fox"\n}\n```', "A red fox"),
        ("A red fox at dusk", "A red fox at dusk"),
    ],
)
def test_image_prompt_answers(text: str, prompt: str) -> None:
    assert parsed("image_prompt_generation", text) == {"prompt": prompt}


def test_free_form_kinds_return_the_text() -> None:
    assert normalize_task_answer("emoji_generation", " 😊\n") == "😊"
    assert normalize_task_answer("moa_response_generation", " A merged answer. ") == " A merged answer. "
    calls = '{"tool_calls": []}'
    assert normalize_task_answer("function_calling", calls) == calls
    assert normalize_task_answer("unknown_task", "anything {") == "anything {"


@pytest.mark.parametrize(
    ("kind", "key", "kind_type"),
    [
        ("title_generation", "title", str),
        ("tags_generation", "tags", list),
        ("follow_up_generation", "follow_ups", list),
        ("query_generation", "queries", list),
        ("autocomplete_generation", "text", str),
        ("image_prompt_generation", "prompt", str),
    ],
)
@pytest.mark.parametrize(
    "garbage",
    ["", "}{", "{not json at all]", '{"other": 1}', "[1, 2, 3]", "null", "```\n```", "\x00\x01"],
)
def test_garbage_still_gives_the_right_shape(kind: str, key: str, kind_type: type, garbage: str) -> None:
    value = parsed(kind, garbage)
    assert list(value) == [key]
    assert isinstance(value[key], kind_type)
    if isinstance(value[key], list):
        assert all(isinstance(item, str) for item in value[key])
