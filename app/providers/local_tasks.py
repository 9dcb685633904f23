"""Answers for Open WebUI background task prompts (`### Task:` ...).

Open WebUI parses the text between the first `{` and the last `}` of the reply
as JSON, so every answer here is a single JSON object with the key the task
template asks for.
"""

from __future__ import annotations

import json
import re
import string

__all__ = ["answer_task", "is_task_prompt"]

_TASK_PREFIX = "### Task:"
_HISTORY = re.compile(r"<chat_history>(.*?)(?:</chat_history>|$)", re.DOTALL | re.IGNORECASE)
_TURN = re.compile(r"^(USER|ASSISTANT|SYSTEM):\s?(.*)$", re.IGNORECASE)
_OUTPUT_KEY = re.compile(r'"(follow_ups|queries|tags|title|prompt|text)"\s*:')
_STRIP = string.punctuation.replace("'", "").replace(".", "") + "“”‘’`"
_CODE_WORDS = frozenset(
    {
        "code",
        "file",
        "files",
        "python",
        "test",
        "tests",
        "bug",
        "error",
        "function",
        "class",
        "repo",
        "readme",
        "search",
        "grep",
        "list",
        "read",
        "run",
        "pytest",
    }
)


def is_task_prompt(text: str) -> bool:
    return text.lstrip().startswith(_TASK_PREFIX)


def answer_task(prompt: str) -> str:
    """The JSON reply for one task prompt; unknown tasks get `{"text": ""}`."""
    turns = _history(prompt)
    kind = _task_kind(prompt)
    if kind == "title":
        return _json({"title": _title(turns)})
    if kind == "tags":
        return _json({"tags": _tags(turns)})
    if kind == "follow_ups":
        return _json({"follow_ups": _follow_ups()})
    if kind == "queries":
        return _json({"queries": _queries(turns)})
    if kind == "prompt":
        return _json({"prompt": _last_user(turns)})
    return _json({"text": ""})


def _task_kind(prompt: str) -> str:
    # Decide on the task description first: the follow-up template also says
    # "continue", and custom templates may not spell out the output key.
    sections = prompt.split("###")
    head = (sections[1] if len(sections) > 1 else prompt).lower()
    for words, kind in (
        (("autocomplet",), "text"),
        (("follow-up", "follow_up", "follow up"), "follow_ups"),
        (("search quer", "queries"), "queries"),
        (("tags",), "tags"),
        (("title",), "title"),
        (("image prompt",), "prompt"),
    ):
        if any(word in head for word in words):
            return kind
    key = _OUTPUT_KEY.search(prompt)
    return key.group(1) if key else "text"


def _history(prompt: str) -> list[tuple[str, str]]:
    """(role, text) turns from the `<chat_history>` block, roles upper-case."""
    match = _HISTORY.search(prompt)
    if match is None:
        return []
    turns: list[tuple[str, str]] = []
    for line in match.group(1).splitlines():
        turn = _TURN.match(line.strip())
        if turn:
            turns.append((turn.group(1).upper(), turn.group(2)))
        elif turns and line.strip():
            role, text = turns[-1]
            turns[-1] = (role, f"{text} {line.strip()}")
    return turns


def _words(text: str) -> list[str]:
    words = (w.strip(_STRIP).rstrip(".") for w in text.split())
    return [w for w in words if w]


def _title(turns: list[tuple[str, str]]) -> str:
    """Up to six words of what the user asked (short requests give short titles)."""
    words: list[str] = []
    for role, text in turns:
        if role == "USER":
            words.extend(_words(text))
        if len(words) >= 3:
            break
    if not words:
        return "New Chat"
    title = " ".join(words[:6])
    return title[0].upper() + title[1:]


def _tags(turns: list[tuple[str, str]]) -> list[str]:
    text = " ".join(t for _, t in turns).lower()
    tags = ["General"]
    if _CODE_WORDS.intersection(_words(text)):
        tags.append("Programming")
    return tags


def _follow_ups() -> list[str]:
    return [
        "Can you list the files in the workspace?",
        "Can you read the README.md file?",
        "Can you search the code for TODO comments?",
    ]


def _queries(turns: list[tuple[str, str]]) -> list[str]:
    last = _last_user(turns)
    return [last[:100]] if last else []


def _last_user(turns: list[tuple[str, str]]) -> str:
    users = [text.strip() for role, text in turns if role == "USER" and text.strip()]
    return users[-1] if users else ""


def _json(value: dict[str, object]) -> str:
    return json.dumps(value, ensure_ascii=False)
