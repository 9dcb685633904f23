"""Open WebUI background tasks (SPEC §8, open-webui.md §1.5 and §2).

Open WebUI asks the chat model for a title, tags, follow-ups, search queries
and autocompletions with separate `stream: false` requests. They are answered
by one plain model call, outside the agent, in the JSON shape Open WebUI
parses: the text between the first `{` and the last `}` of the reply.

Recognition: the operator-configured task header (Open WebUI's `{{TASK}}`
header template, empty on the main turn) wins; otherwise a non-streaming
request whose only user message starts with `### Task:`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from app.providers.base import ChatMessage

__all__ = ["TASK_KINDS", "UNKNOWN_TASK", "detect_task", "normalize_task_answer", "task_messages"]

TASK_KINDS: tuple[str, ...] = (
    "title_generation",
    "tags_generation",
    "follow_up_generation",
    "query_generation",
    "autocomplete_generation",
    "image_prompt_generation",
    "emoji_generation",
    "moa_response_generation",
    "function_calling",
)
UNKNOWN_TASK = "unknown_task"

_TASK_PREFIX = "### Task:"
_TITLE_LIMIT = 80
_DEFAULT_TITLE = "New Chat"
_MAX_TAG_WORDS = 4
_MAX_TAG_CHARS = 40

# Template parts that quote the user's text: never read task keywords from them.
_QUOTED = re.compile(
    r"<chat_history>.*?(?:</chat_history>|$)|<(?:text|type)>[^\n]*?</(?:text|type)>",
    re.DOTALL | re.IGNORECASE,
)
_OUTPUT_KEY = re.compile(r"\"(title|tags|follow_ups|queries|text|prompt)\"\s*:")
_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```\w*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*•+]\s+|\d+[.)]\s+|#+\s+)")
_EDGE_CHARS = " \t\"'`*_#“”‘’,;"
_TITLE_LABEL = re.compile(r"^\W*title\W*:\s*", re.IGNORECASE)


# --------------------------------------------------------------------------- detection


def detect_task(*, header_value: str | None, stream: bool, messages: Sequence[ChatMessage]) -> str | None:
    """The task kind (one of TASK_KINDS or "unknown_task"), or None for a main turn."""
    header = (header_value or "").strip()
    if header:
        return header if header in TASK_KINDS else UNKNOWN_TASK
    if stream:
        return None
    prompt = _task_prompt(messages)
    return None if prompt is None else _kind_from_prompt(prompt)


def _task_prompt(messages: Sequence[ChatMessage]) -> str | None:
    """The `### Task:` text when it is the request's only user message (system messages allowed)."""
    if any(message.role not in ("user", "system") for message in messages):
        return None
    users = [message for message in messages if message.role == "user"]
    if len(users) != 1:
        return None
    text = users[0].content.lstrip()
    return text if text.startswith(_TASK_PREFIX) else None


def _kind_from_prompt(prompt: str) -> str:
    """Decide from the JSON key the template asks for, then from the `### Task:` paragraph."""
    template = _QUOTED.sub(" ", prompt)
    keys = {match.group(1) for match in _OUTPUT_KEY.finditer(template)}
    if len(keys) == 1:
        return _kind_from_key(keys.pop())
    kind = _kind_from_paragraph(_task_paragraph(template))
    if kind != UNKNOWN_TASK or not keys:
        return kind
    first = _OUTPUT_KEY.search(template)
    return _kind_from_key(first.group(1)) if first else UNKNOWN_TASK


def _task_paragraph(template: str) -> str:
    """The text between `### Task:` and the next `###` heading, lower-cased."""
    body = template.lstrip()[len(_TASK_PREFIX) :]
    return body.split("###", 1)[0].lower()


def _kind_from_key(key: str) -> str:
    match key:
        case "title":
            return "title_generation"
        case "tags":
            return "tags_generation"
        case "follow_ups":
            return "follow_up_generation"
        case "queries":
            return "query_generation"
        case "text":
            return "autocomplete_generation"
        case "prompt":
            return "image_prompt_generation"
        case _:
            return UNKNOWN_TASK


def _kind_from_paragraph(paragraph: str) -> str:
    # Order matters: the autocomplete and follow-up paragraphs both say "continue",
    # the follow-up one also says "prompts", and the image one says "prompt".
    rules: tuple[tuple[tuple[str, ...], str], ...] = (
        (("autocomplet",), "autocomplete_generation"),
        (("follow-up", "follow_up", "follow up", "followup"), "follow_up_generation"),
        (
            ("image prompt", "prompt for an image", "prompt for am image", "image generation"),
            "image_prompt_generation",
        ),
        (("search quer", "retrieval quer", "queries"), "query_generation"),
        (("tags",), "tags_generation"),
        (("title",), "title_generation"),
        (("emoji",), "emoji_generation"),
    )
    for needles, kind in rules:
        if any(needle in paragraph for needle in needles):
            return kind
    return UNKNOWN_TASK


def task_messages(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """What to send the model for a task: the request's messages, unchanged."""
    return tuple(messages)


# --------------------------------------------------------------------------- answers


def normalize_task_answer(kind: str, text: str) -> str:
    """The reply Open WebUI can parse for `kind`: a JSON object, or the text for free-form tasks."""
    match _short_kind(kind):
        case "title":
            return _dump("title", _title(_clean(text)))
        case "tags":
            return _dump("tags", _tags(_clean(text)))
        case "follow_up":
            return _dump("follow_ups", _lines(_clean(text), "follow_ups"))
        case "query":
            return _dump("queries", _lines(_clean(text), "queries"))
        case "autocomplete":
            return _dump("text", _string(_clean(text), "text"))
        case "image_prompt":
            return _dump("prompt", _string(_clean(text), "prompt"))
        case "emoji":
            return text.strip()
        case _:
            return text


def _short_kind(kind: str) -> str:
    """`title_generation` -> `title`; short names (`title`, `follow_up`, ...) pass through."""
    return kind.removesuffix("_generation")


def _dump(key: str, value: object) -> str:
    return json.dumps({key: value}, ensure_ascii=False, separators=(",", ":"))


def _clean(text: str) -> str:
    """The reply without reasoning blocks and markdown code fences."""
    lines = _THINK.sub("", text).splitlines()
    return "\n".join(line for line in lines if not _FENCE.match(line)).strip()


def _json_list(text: str) -> list[object] | None:
    """A reply that is a bare JSON array (the object Open WebUI wants, minus the wrapper)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _json_object(text: str) -> dict[str, object] | None:
    """The object between the first `{` and the last `}`, as Open WebUI reads it."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _pick(obj: dict[str, object], key: str, kind_type: type) -> object:
    """The value under `key`; else the only value of the expected type (a renamed key)."""
    if key in obj:
        return obj[key]
    candidates = [value for value in obj.values() if isinstance(value, kind_type)]
    return candidates[0] if len(candidates) == 1 else None


def _title(text: str) -> str:
    obj = _json_object(text)
    if obj is None:
        raw = _quoted_value(text, "title") or _first_line(text)
    else:
        value = _pick(obj, "title", str)
        raw = value if isinstance(value, str) else _scalar(value)
    title = _strip_edges(_TITLE_LABEL.sub("", " ".join(raw.split())))
    if len(title) > _TITLE_LIMIT:
        title = title[:_TITLE_LIMIT].rsplit(" ", 1)[0].rstrip() or title[:_TITLE_LIMIT]
    return title or _DEFAULT_TITLE


def _tags(text: str) -> list[str]:
    obj = _json_object(text)
    bare = _json_list(text)
    if bare is not None:
        return _string_items(bare)
    if obj is None:
        items = _quoted_list(text, "tags")
        if items is None:
            items = re.split(r"[,\n]", text)
    else:
        value = _pick(obj, "tags", list)
        if isinstance(value, list):
            return _string_items(value)
        items = re.split(r"[,\n]", value) if isinstance(value, str) else []
    tags = (_strip_edges(_BULLET.sub("", item)) for item in items)
    return [tag for tag in tags if _looks_like_tag(tag)]


def _looks_like_tag(tag: str) -> bool:
    return _is_content_line(tag) and len(tag) <= _MAX_TAG_CHARS and len(tag.split()) <= _MAX_TAG_WORDS


def _lines(text: str, key: str) -> list[str]:
    obj = _json_object(text)
    bare = _json_list(text)
    if bare is not None:
        return _string_items(bare)
    if obj is None:
        quoted = _quoted_list(text, key)
        if quoted is not None:
            return [item for item in (_strip_edges(q) for q in quoted) if item]
    else:
        value = _pick(obj, key, list)
        if isinstance(value, list):
            return _string_items(value)
        text = value if isinstance(value, str) else ""
    items = (_strip_edges(_BULLET.sub("", line)) for line in text.splitlines())
    return [item for item in items if _is_content_line(item)]


def _is_content_line(line: str) -> bool:
    """Not empty, not JSON debris, not a preamble such as "Here are some questions:"."""
    return (
        bool(line)
        and line[0] not in "{}[]"
        and line[-1] not in ":{}[]"
        and line.lower() not in ("null", "none", "true", "false")
    )


def _string(text: str, key: str) -> str:
    obj = _json_object(text)
    if obj is not None:
        value = _pick(obj, key, str)
        return value if isinstance(value, str) else _scalar(value)
    quoted = _quoted_value(text, key)
    if quoted is not None:
        return quoted
    return text


def _scalar(value: object) -> str:
    """Numbers as text; anything else (null, lists, objects, booleans) as empty."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _string_items(values: list[object]) -> list[str]:
    """Keep strings (and numbers, as text); drop empty items, objects and nulls."""
    items = (value.strip() if isinstance(value, str) else _scalar(value) for value in values)
    return [item for item in items if item]


def _quoted_value(text: str, key: str) -> str | None:
    """`"key": "value"` from almost-JSON (single quotes, trailing commas, cut-off braces)."""
    match = re.search(rf"[\"']{key}[\"']\s*:\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*')", text)
    return None if match is None else _unquote(match.group(1))


def _quoted_list(text: str, key: str) -> list[str] | None:
    """`"key": ["a", "b"]` from almost-JSON; None when the key is not there."""
    match = re.search(rf"[\"']{key}[\"']\s*:\s*\[(.*?)(\]|$)", text, re.DOTALL)
    if match is None:
        return None
    items = re.findall(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'", match.group(1))
    return [_unquote(item) for item in items]


def _unquote(literal: str) -> str:
    if literal.startswith('"'):
        try:
            value = json.loads(literal)
        except ValueError:
            return literal[1:-1]
        return value if isinstance(value, str) else literal[1:-1]
    return literal[1:-1]


def _first_line(text: str) -> str:
    lines = (_strip_edges(_BULLET.sub("", line)) for line in text.splitlines())
    return next((line for line in lines if _is_content_line(line)), "")


def _strip_edges(text: str) -> str:
    return text.strip().strip(_EDGE_CHARS).strip()
