"""The ambiguity router (SPEC §8): is the last user message actionable as it stands?

The default classifier is deterministic and conservative. A message is
`ambiguous` only when it is a bare instruction made of a vague verb and a
pronoun or filler ("fix it", "make it better", "clean this up") and nothing
earlier in the conversation gives the pronoun something to point at. Everything
else (greetings, questions, anything naming a file, symbol, error, URL or
command, long messages, instructions with a concrete object) is `clear`: a
needless clarification costs the user more than a missed one.

`classify_with_model` is the optional model-based classifier; it falls back to
`classify` whenever the model call fails.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Literal

from app.providers.base import ChatMessage, ChatProvider, ModelRequest, TextDelta

__all__ = [
    "RESEARCH_PROMPT",
    "Verdict",
    "clarification",
    "classify",
    "classify_with_model",
]

Verdict = Literal["clear", "ambiguous"]

RESEARCH_PROMPT = (
    "You are in research mode. The request is open to more than one reading, so do not "
    "change anything: do not write, edit, move or delete files and do not run commands "
    "that modify the workspace or any other system. Investigate with the read-only tools "
    "you have (list, read and search files, inspect the project) to work out what the user "
    "most likely means. Then report your findings: what you looked at, what you found "
    "(name the files, functions and errors involved), the likely interpretations of the "
    "request, and the concrete change you would make for each. End by asking the user "
    "which one to go ahead with."
)

_LONG_MESSAGE_WORDS = 12

_VAGUE_VERBS = frozenset(
    {
        "fix",
        "improve",
        "clean",
        "cleanup",
        "refactor",
        "update",
        "change",
        "do",
        "make",
        "tidy",
        "optimize",
        "optimise",
        "rewrite",
        "redo",
        "rework",
        "sort",
        "handle",
        "finish",
        "correct",
        "debug",
        "solve",
        "repair",
        "adjust",
        "tweak",
        "polish",
        "simplify",
        "modify",
        "edit",
        "enhance",
    }
)
_REFERENTS = frozenset({"it", "this", "that", "them", "these", "those", "things", "stuff", "everything"})
_FILLER = frozenset(
    {
        "please",
        "pls",
        "plz",
        "just",
        "now",
        "again",
        "kindly",
        "ok",
        "okay",
        "so",
        "then",
        "and",
        "also",
        "for",
        "me",
        "us",
        "quickly",
        "asap",
        "all",
        "the",
        "whole",
        "thing",
        "up",
        "out",
        "better",
        "work",
        "works",
        "working",
        "properly",
        "right",
        "correctly",
        "nicer",
        "cleaner",
        "faster",
        "simpler",
        "prettier",
        "good",
        "more",
        "a",
        "bit",
        "little",
        "lot",
        "same",
        "too",
    }
)
_SMALLTALK = frozenset(
    {
        "hi",
        "hello",
        "hey",
        "yo",
        "hiya",
        "howdy",
        "greetings",
        "good",
        "morning",
        "afternoon",
        "evening",
        "there",
        "thanks",
        "thank",
        "thx",
        "ty",
        "you",
        "ok",
        "okay",
        "k",
        "yes",
        "yeah",
        "yep",
        "no",
        "nope",
        "sure",
        "cool",
        "great",
        "nice",
        "bye",
        "cheers",
        "how",
        "are",
        "doing",
        "all",
        "everyone",
        "bmo",
        "what's",
        "whats",
        "up",
        "sup",
        "much",
        "very",
        "i",
        "can",
        "help",
        "today",
        "with",
        "anything",
        "else",
    }
)
_QUESTION_STARTS = frozenset(
    {"what", "why", "how", "where", "when", "who", "which", "can", "could", "is", "are", "does", "do"}
)
_SHELL_COMMANDS = frozenset(
    {
        "ls",
        "cd",
        "cat",
        "git",
        "grep",
        "rg",
        "find",
        "python",
        "python3",
        "pip",
        "pytest",
        "npm",
        "npx",
        "yarn",
        "pnpm",
        "node",
        "cargo",
        "docker",
        "kubectl",
        "curl",
        "wget",
        "sed",
        "awk",
        "echo",
        "mkdir",
        "rm",
        "cp",
        "mv",
        "bash",
        "sh",
        "uv",
        "ruff",
        "tox",
        "poetry",
    }
)

_WORD = re.compile(r"[a-z][a-z']*")
_FILE = re.compile(r"\b[\w-]+\.[A-Za-z][A-Za-z0-9]{0,7}\b|\S/\S|^/\S|\s/\S")
_SNAKE = re.compile(r"\b[A-Za-z0-9]+_[A-Za-z0-9_]+\b")
_CAMEL = re.compile(r"\b[A-Z][a-z0-9]+[A-Z]\w*\b|\b[a-z]+[A-Z]\w*\b")
_CALL = re.compile(r"\b\w+\(")
_ERROR = re.compile(
    r"\w*(Error|Exception)\b|\b(error|errors|exception|traceback|failed|failing|fails|failure"
    r"|crash|crashes|crashed|panic|segfault|warning)\b",
    re.IGNORECASE,
)
_URL = re.compile(r"https?://|\bwww\.\S", re.IGNORECASE)

_FIX_VERBS = frozenset({"fix", "debug", "repair", "correct", "solve"})
_IMPROVE_VERBS = frozenset(
    {"improve", "enhance", "polish", "optimize", "optimise", "simplify", "refactor", "rework", "rewrite"}
)
_VERB_PHRASES = MappingProxyType(
    {"clean": "clean up", "cleanup": "clean up", "tidy": "tidy up", "sort": "sort out"}
)

_CLASSIFIER_PROMPT = (
    "You are a router in front of a coding agent. Decide whether the LAST user message, "
    "read together with the conversation before it, tells the agent what to act on. "
    "Answer AMBIGUOUS only when it is an instruction whose target nothing in the "
    "conversation identifies (for example 'fix it' or 'make it better' with no earlier "
    "mention of a file, function, error or topic). Greetings, questions, and messages "
    "that name a file, symbol, error, URL, command or a concrete task are CLEAR. When in "
    "doubt, answer CLEAR. Reply with exactly one word: CLEAR or AMBIGUOUS."
)
_TRANSCRIPT_MESSAGES = 12
_TRANSCRIPT_CHARS = 600
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


# --------------------------------------------------------------------------- deterministic


def classify(messages: Sequence[ChatMessage]) -> Verdict:
    """`ambiguous` only for a vague instruction that nothing in the conversation resolves."""
    index = _last_user_index(messages)
    if index is None:
        return "clear"
    text = messages[index].content.strip()
    if not _is_vague_instruction(text):
        return "clear"
    if any(_is_substantive(message) for message in messages[:index]):
        return "clear"
    return "ambiguous"


def _last_user_index(messages: Sequence[ChatMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _is_vague_instruction(text: str) -> bool:
    """A short bare instruction made only of vague verbs, pronouns and filler words."""
    if not text or _is_question(text) or _is_concrete(text):
        return False
    words = _words(text)
    if not words or len(words) > _LONG_MESSAGE_WORDS:
        return False
    if len(text.split()) != len(words):  # digits, symbols or stray tokens we cannot read
        return False
    allowed = _VAGUE_VERBS | _REFERENTS | _FILLER
    if any(word not in allowed for word in words):
        return False
    first = next((word for word in words if word not in _FILLER), None)
    return first in _VAGUE_VERBS


def _is_question(text: str) -> bool:
    if text.rstrip().endswith("?"):
        return True
    words = _words(text)
    if not words or words[0] not in _QUESTION_STARTS:
        return False
    # "do it" / "do that" are instructions, "do you ..." / "do the tests pass" are questions.
    return not (words[0] == "do" and len(words) > 1 and words[1] in _REFERENTS)


def _is_concrete(text: str) -> bool:
    """Names something: a file or path, a symbol, code, an error, a URL or a shell command."""
    return (
        "`" in text
        or bool(_FILE.search(text))
        or bool(_SNAKE.search(text))
        or bool(_CAMEL.search(text))
        or bool(_CALL.search(text))
        or bool(_ERROR.search(text))
        or bool(_URL.search(text))
        or _is_shell_command(text)
    )


def _is_shell_command(text: str) -> bool:
    stripped = text.lstrip()
    if stripped.startswith("$ "):
        return True
    first = stripped.split(maxsplit=1)[0] if stripped else ""
    return first in _SHELL_COMMANDS


def _is_smalltalk(text: str) -> bool:
    words = _words(text)
    return all(word in _SMALLTALK for word in words)


def _is_substantive(message: ChatMessage) -> bool:
    """Does this earlier message give a later "it" / "this" something to refer to?"""
    if message.role == "tool" or message.tool_calls:
        return True
    text = message.content.strip()
    if message.role not in ("user", "assistant") or not text:
        return False
    if _is_concrete(text) or len(text.split()) > _LONG_MESSAGE_WORDS:
        return True
    if message.role == "assistant":
        return False
    return not (_is_smalltalk(text) or _is_vague_instruction(text))


# --------------------------------------------------------------------------- clarification


def clarification(messages: Sequence[ChatMessage]) -> str:
    """One question with numbered interpretations, tailored to the verb the user used."""
    index = _last_user_index(messages)
    words = _words(messages[index].content) if index is not None else []
    verb, options = _verb_and_options(words)
    lines = [f"What would you like me to {verb}? For example:"]
    lines.extend(f"{number}. {option}" for number, option in enumerate(options, start=1))
    lines.append("Reply with a number or describe the target (a file, a function or an error message).")
    return "\n".join(lines)


def _verb_and_options(words: list[str]) -> tuple[str, tuple[str, ...]]:
    verb = next((word for word in words if word in _VAGUE_VERBS), "")
    if verb in _FIX_VERBS or (verb == "make" and {"work", "works", "working"} & set(words)):
        return ("fix" if verb == "make" else verb), _fix_options()
    if verb in _IMPROVE_VERBS or verb == "make":
        return ("improve" if verb == "make" else verb), _improve_options()
    if verb in _VERB_PHRASES:
        return _VERB_PHRASES[verb], _improve_options()
    return (verb or "work on"), _change_options()


def _fix_options() -> tuple[str, ...]:
    return (
        "A failing test: tell me which one, or paste the test output.",
        "A bug in a specific file or function: name it and describe what goes wrong.",
        "An error message you saw: paste it, with the command that produced it.",
    )


def _improve_options() -> tuple[str, ...]:
    return (
        "The code in a specific file: readability, naming and structure.",
        "A specific function or class: simplify it or split it up.",
        "The performance of one part of the project: tell me which part is slow.",
    )


def _change_options() -> tuple[str, ...]:
    return (
        "A specific file: name it and say what should change.",
        "A function or class: tell me its name and the new behaviour.",
        "The project setup: configuration, dependencies or scripts.",
    )


# --------------------------------------------------------------------------- model-based


async def classify_with_model(provider: ChatProvider, model: str, messages: Sequence[ChatMessage]) -> Verdict:
    """Ask the model for CLEAR / AMBIGUOUS; any failure falls back to `classify`."""
    index = _last_user_index(messages)
    if index is None:
        return "clear"
    prompt = _transcript(messages, index)
    request = ModelRequest(
        model=model,
        messages=(ChatMessage("system", _CLASSIFIER_PROMPT), ChatMessage("user", prompt)),
        stream=False,
    )
    try:
        text = await _collect_text(provider, request)
    except Exception:
        return classify(messages)
    return _parse_verdict(text)


async def _collect_text(provider: ChatProvider, request: ModelRequest) -> str:
    parts: list[str] = []
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            parts.append(event.text)
    return "".join(parts)


def _transcript(messages: Sequence[ChatMessage], index: int) -> str:
    earlier = [_render(message) for message in messages[:index] if message.role != "system"]
    earlier = [line for line in earlier if line][-_TRANSCRIPT_MESSAGES:]
    history = "\n".join(earlier) if earlier else "(no earlier messages)"
    last = _clip(messages[index].content)
    return (
        f"Conversation so far:\n{history}\n\nLast user message:\n{last}\n\n"
        "Is the last user message CLEAR or AMBIGUOUS? Answer with one word."
    )


def _render(message: ChatMessage) -> str:
    text = _clip(message.content)
    if message.tool_calls:
        names = ", ".join(call.name for call in message.tool_calls)
        text = f"{text} (called tools: {names})".strip()
    return f"{message.role.upper()}: {text}" if text else ""


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _TRANSCRIPT_CHARS else text[:_TRANSCRIPT_CHARS] + "…"


def _parse_verdict(text: str) -> Verdict:
    words = set(re.findall(r"[A-Z]+", _THINK.sub("", text).upper()))
    markers = words & {"CLEAR", "AMBIGUOUS", "UNAMBIGUOUS", "NOT"}
    return "ambiguous" if markers == {"AMBIGUOUS"} else "clear"
