"""The brain of `bmo/local`: pure rules from a conversation to the next step.

`plan_reply` either asks for one tool call (derived from the last user
message) or writes a final answer (from the tool results that just came back,
or a canned honest reply). No I/O, so every rule is unit-testable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from types import MappingProxyType
from typing import Any

import msgspec

from app.providers.base import ChatMessage, ToolCall
from app.providers.local_tasks import answer_task, is_task_prompt

__all__ = [
    "CAPABILITIES",
    "CONFIGURE_HINT",
    "Plan",
    "classify",
    "compose_tool_answer",
    "plan_reply",
]


class Plan(msgspec.Struct, frozen=True):
    """The next step: a final `text` answer, or exactly one `tool_call`."""

    text: str = ""
    tool_call: ToolCall | None = None


CAPABILITIES = (
    "I can work with the files in this workspace:\n\n"
    '- list files: "list files", "list the files in src", "what\'s in docs/"\n'
    '- read a file: "read README.md", "show me app/main.py"\n'
    '- search: "search for TODO", "grep foo", "where is main defined"\n'
    '- run a command: "run `pytest -q`" (only when the `bash` tool is enabled)'
)
CONFIGURE_HINT = (
    "For real answers, configure a provider in `bmo.toml`:\n\n"
    '```toml\n[providers.<name>]\ntype = "openai"\n'
    'base_url = "https://api.openai.com/v1"\napi_key = "${OPENAI_API_KEY}"\n'
    'models = ["<model>"]\n```\n\n'
    "then pick the model `<name>/<model>` (for example `ollama/qwen2.5-coder:7b` "
    'with `base_url = "http://127.0.0.1:11434/v1"`).'
)
_GREETING = "Hi! I'm `bmo/local`, bmo's built-in offline model. "
_FALLBACK = (
    "I'm `bmo/local`, bmo's offline rule-based model: there is no language model "
    "behind me, so I can only follow simple requests. "
)

_I = re.IGNORECASE
_POLITE_HEAD = re.compile(
    r"^(?:(?:hey\s+)?bmo[,:]?\s+)?(?:(?:please|pls|kindly)\s+)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?)?",
    _I,
)
_POLITE_TAIL = re.compile(r"(?:\s*,?\s*please)?[\s?!.]*$", _I)
_QUOTED = r"\"[^\"]+\"|'[^']+'|`[^`]+`"
_Q = r"(?P<q>" + _QUOTED + r"|.+?)"
_IN_PATH = r"(?:\s+(?:in|under|inside)\s+(?P<path>[\w./-]+))?"
_USAGE = (
    r"(?:all\s+)?(?:the\s+)?(?:usages?|uses|references|occurrences|mentions|callers|calls)"
    r"\s+(?:of|to)\s+"
)
_BASH = (
    re.compile(r"(?:run|execute|exec)\b[^`]*`(?P<cmd>[^`]+)`.*", _I | re.DOTALL),
    re.compile(r"(?:run|execute|exec)\s+(?P<cmd>.+)", _I),
    re.compile(r"\$\s+(?P<cmd>.+)", _I),
)
_SEARCH = (
    re.compile(r"grep\s+(?:-\w+\s+)*(?P<q>" + _QUOTED + r"|\S+)(?:\s+(?P<path>\S+))?", _I),
    re.compile(r"(?:find|show(?:\s+me)?|list)\s+" + _USAGE + _Q + _IN_PATH, _I),
    re.compile(
        r"(?:search(?:\s+(?:through\s+)?(?:the\s+)?(?:code(?:base)?|repo|project|files))?"
        r"(?:\s+for)?|look\s+for|look\s+up|hunt\s+for)\s+(?:" + _USAGE + ")?" + _Q + _IN_PATH,
        _I,
    ),
    re.compile(
        r"where(?:'s|’s|\s+is|\s+are)\s+"
        + _Q
        + r"\s+(?:defined|declared|used|implemented|called|referenced|set)",
        _I,
    ),
    re.compile(r"find\s+(?P<q>" + _QUOTED + ")" + _IN_PATH, _I),
)
_DIR_WORDS = r"(?:files|entries|contents|directory|dir|folder|directories|folders)"
_LIST = (
    re.compile(
        r"(?:list|show(?:\s+me)?|display|what\s+are)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?"
        + _DIR_WORDS
        + r"(?:\s+(?:in|of|under|inside|at|for)\s+(?P<path>.+))?",
        _I,
    ),
    re.compile(r"(?:ls|dir|list)(?:\s+-\w+)*(?:\s+(?P<path>\S+))?", _I),
    re.compile(r"what(?:'s|’s|s|\s+is)\s+(?:in|inside)\s+(?P<path>.+)", _I),
    re.compile(r"what\s+(?:files|entries)\s+are\s+(?:there\s+)?(?:in|under)\s+(?P<path>.+)", _I),
    re.compile(r"what\s+files\s+are\s+(?:there|here)(?P<path>)", _I),
)
_READ = (
    # "read README.md and summarise it": the offline model reads; the rest needs a real model
    re.compile(r"(?:read|cat|open)\s+(?:the\s+)?(?:file\s+)?(?P<path>\S+)(?:\s+file)?(?:\s+and\s+.+)?", _I),
    # Looser verbs ("show me ...") only count when the object looks like a path.
    re.compile(
        r"(?i:show(?:\s+me)?|display|view|print)\s+(?i:the\s+)?"
        r"(?i:file\s+|contents?\s+of\s+(?:the\s+)?(?:file\s+)?)?"
        r"(?P<path>\S*[./]\S*|[A-Z]\w*)(?i:\s+file)?",
    ),
)
_GREETING_RE = re.compile(
    r"(?:hi|hello|hey|hiya|howdy|yo|hallo|greetings|good\s+(?:morning|afternoon|evening))"
    r"(?:\s+(?:there|bmo|all|everyone))?|help|what\s+can\s+you\s+do|who\s+are\s+you",
    _I,
)
_HERE = re.compile(
    r"\.?/?|here|(?:the\s+)?(?:current\s+directory|workspace|repo(?:sitory)?|project|root"
    r"|code(?:base)?)|this\s+(?:directory|folder)",
    _I,
)
_SEARCH_NOISE = re.compile(r"\s+in\s+(?:the\s+)?(?:code(?:base)?|repo(?:sitory)?|project|workspace)$", _I)
_SYMBOL_NOISE = re.compile(r"^the\s+|\s+(?:function|class|method|variable|constant)$", _I)
_TESTS = re.compile(r"(?:the\s+)?(?:unit\s+)?tests?(?:\s+suite)?", _I)


def plan_reply(messages: Sequence[ChatMessage], tool_names: Collection[str]) -> Plan:
    """Decide the next step of the local model for this conversation."""
    if messages and messages[-1].role == "tool":
        return Plan(text=compose_tool_answer(messages))
    text = next((m.content for m in reversed(messages) if m.role == "user"), "")
    if is_task_prompt(text):
        return Plan(text=answer_task(text))
    kind, args = classify(text)
    if kind == "greeting":
        return Plan(text=_GREETING + CAPABILITIES)
    if kind == "other":
        return Plan(text=_FALLBACK + CAPABILITIES + "\n\n" + CONFIGURE_HINT)
    if kind not in tool_names:
        return Plan(text=_not_offered(kind, args))
    arguments = json.dumps(args, ensure_ascii=False)
    return Plan(tool_call=ToolCall(_call_id(kind, arguments, len(messages)), kind, arguments))


def classify(text: str) -> tuple[str, dict[str, Any]]:
    """(intent, tool arguments); intent is a tool name, "greeting" or "other"."""
    cleaned = _POLITE_TAIL.sub("", _POLITE_HEAD.sub("", text.strip(), count=1))
    parsers = (("bash", _bash), ("search", _search), ("list_dir", _list), ("read_file", _read))
    for kind, parse in parsers:
        args = parse(cleaned)
        if args is not None:
            return _prefer_read(kind, args)
    if _GREETING_RE.fullmatch(cleaned):
        return "greeting", {}
    return "other", {}


def _bash(text: str) -> dict[str, Any] | None:
    match = _first(_BASH, text)
    if match is None:
        return None
    command = _unquote(match.group("cmd"))
    return {"command": "pytest -q" if _TESTS.fullmatch(command) else command}


def _search(text: str) -> dict[str, Any] | None:
    match = _first(_SEARCH, text)
    if match is None:
        return None
    query = _SEARCH_NOISE.sub("", match.group("q"))
    query = _unquote(_SYMBOL_NOISE.sub("", query))
    args: dict[str, Any] = {"pattern": re.escape(query)}
    path = match.groupdict().get("path")
    if path:
        args["path"] = _clean_path(path)
    return args


def _list(text: str) -> dict[str, Any] | None:
    match = _first(_LIST, text)
    return None if match is None else {"path": _clean_path(match.group("path") or "")}


def _read(text: str) -> dict[str, Any] | None:
    match = _first(_READ, text)
    return None if match is None else {"path": _clean_path(match.group("path"))}


def _prefer_read(kind: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    # "what's in app/main.py" names a file: reading it is what the user wants.
    if kind == "list_dir" and _looks_like_file(args["path"]):
        return "read_file", args
    return kind, args


def _first(patterns: Sequence[re.Pattern[str]], text: str) -> re.Match[str] | None:
    return next((m for p in patterns if (m := p.fullmatch(text))), None)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        return value[1:-1]
    return value


def _clean_path(raw: str) -> str:
    path = _unquote(raw)
    path = re.sub(r"\s+(?:folder|directory|dir)$", "", path, flags=_I)
    if _HERE.fullmatch(path):
        return "."
    path = re.sub(r"^the\s+", "", path, flags=_I)
    return path.rstrip("/") or path


def _looks_like_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name.lstrip(".") and not path.endswith("/")


def _call_id(name: str, arguments: str, message_count: int) -> str:
    digest = hashlib.sha256(f"{name}{arguments}{message_count}".encode()).hexdigest()
    return "call_" + digest[:24]


def _not_offered(kind: str, args: dict[str, Any]) -> str:
    if kind == "bash":
        return (
            f"I would run `{args['command']}` with the shell tool, but the `bash` tool is not "
            "enabled in this build/config, so I can't run commands here. " + CAPABILITIES
        )
    return (
        f"I would use the `{kind}` tool for that, but it is not offered in this request, "
        "so I can't do it here. " + CAPABILITIES
    )


# --- final answers from tool results -------------------------------------

# Fence languages whose name differs from the file extension.
_LANGS = MappingProxyType(
    {
        "py": "python",
        "js": "javascript",
        "ts": "typescript",
        "md": "markdown",
        "yml": "yaml",
        "sh": "bash",
        "rs": "rust",
        "rb": "ruby",
        "h": "c",
        "cfg": "ini",
        "txt": "text",
    }
)
_NOTE = re.compile(r"\[(?:truncated:|offset |empty file).*\]")


def compose_tool_answer(messages: Sequence[ChatMessage]) -> str:
    """Answer from the trailing tool messages, using the calls that asked for them."""
    start = len(messages)
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    calls = {c.id: c for m in messages[:start] if m.role == "assistant" for c in m.tool_calls}
    parts = [_describe(calls.get(m.tool_call_id or ""), m) for m in messages[start:]]
    return "\n\n".join(parts)


def _describe(call: ToolCall | None, result: ChatMessage) -> str:
    name = call.name if call else (result.name or "tool")
    args = _decode(call.arguments) if call else {}
    content = result.content
    if content.startswith("error:"):
        quoted = "\n".join("> " + line for line in content.splitlines())
        return f"The `{name}` tool failed:\n\n{quoted}"
    if name == "list_dir":
        return f"Here are the entries in {_code(args.get('path', '.'))}:\n\n{_fence(content)}"
    if name == "read_file":
        return _describe_read(str(args.get("path", "")), content)
    if name == "search":
        return _describe_search(args, content)
    if name == "bash":
        status = re.search(r"exit(?:\s+(?:code|status))?\s*[:=]?\s*(-?\d+)", content, _I)
        head = f"Ran {_code(args.get('command', ''))}"
        head += f" (exit status {status.group(1)})" if status else ""
        return f"{head}:\n\n{_fence(content)}"
    return f"The `{name}` tool returned:\n\n{_fence(content)}"


def _describe_read(path: str, content: str) -> str:
    # read_file appends its notes as the last lines; they are not file contents.
    lines = content.split("\n")
    notes: list[str] = []
    while lines and _NOTE.fullmatch(lines[-1]):
        notes.insert(0, lines.pop())
    body, tail = "\n".join(lines), "".join("\n\n" + note for note in notes)
    name = path.rsplit("/", 1)[-1].lstrip(".")
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    lang = _LANGS.get(ext, ext) if ext.isalnum() else ""
    return f"Contents of {_code(path)}:\n\n{_fence(body, lang)}{tail}"


def _describe_search(args: dict[str, Any], content: str) -> str:
    pattern = str(args.get("pattern", ""))
    where = f" in {_code(args['path'])}" if args.get("path", ".") != "." else ""
    if content.startswith("no matches"):
        return f"No matches for {_code(pattern)}{where}."
    return f"Matches for {_code(pattern)}{where}:\n\n{_fence(content)}"


def _decode(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _code(value: object) -> str:
    text = str(value)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _fence(body: str, lang: str = "") -> str:
    # A fence longer than any backtick run inside keeps the block intact.
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body.rstrip(chr(10))}\n{fence}"
