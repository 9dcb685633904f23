"""The ambiguity router: deterministic verdicts, clarifications, the model-based classifier."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from app.agent.router import RESEARCH_PROMPT, clarification, classify, classify_with_model
from app.providers.base import (
    ChatMessage,
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCall,
    Usage,
)


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage("assistant", text)


SYSTEM = ChatMessage(
    "system", "You are bmo, a coding agent. Be concise and precise in every answer you give."
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        # bare instructions with nothing to act on
        ("fix it", "ambiguous"),
        ("Fix it.", "ambiguous"),
        ("make it better", "ambiguous"),
        ("clean this up", "ambiguous"),
        ("improve it", "ambiguous"),
        ("do that", "ambiguous"),
        ("change it", "ambiguous"),
        ("make it work", "ambiguous"),
        ("fix this", "ambiguous"),
        ("refactor it", "ambiguous"),
        ("update them", "ambiguous"),
        ("please just fix it now!", "ambiguous"),
        ("ok, do it", "ambiguous"),
        # greetings and questions
        ("hi", "clear"),
        ("hello there", "clear"),
        ("thanks!", "clear"),
        ("fix it?", "clear"),
        ("what does this do", "clear"),
        ("why is it slow?", "clear"),
        ("can you fix it", "clear"),
        ("do you know Rust", "clear"),
        ("how do I make it better", "clear"),
        # names a file, symbol, code, error, URL or command
        ("fix README.md", "clear"),
        ("fix src/app", "clear"),
        ("refactor parse_config", "clear"),
        ("clean up HttpClient", "clear"),
        ("fix main()", "clear"),
        ("fix `it`", "clear"),
        ("fix the TypeError", "clear"),
        ("it failed", "clear"),
        ("error: cannot import name", "clear"),
        ("fix https://example.com/issue/1", "clear"),
        ("git status", "clear"),
        ("pytest -q", "clear"),
        # concrete objects
        ("read README.md and summarise it", "clear"),
        ("add a test for the parser", "clear"),
        ("list files", "clear"),
        ("fix the login page", "clear"),
        ("make it faster by caching the results", "clear"),
        ("continue", "clear"),
        ("yes", "clear"),
        ("2", "clear"),
        # long messages are clear
        ("please fix it and make it better and clean this up and do that and update them all", "clear"),
        ("", "clear"),
    ],
)
def test_classify_single_message(text: str, verdict: str) -> None:
    assert classify([user(text)]) == verdict
    assert classify([SYSTEM, user(text)]) == verdict


@pytest.mark.parametrize(
    ("history", "verdict"),
    [
        ([user("the parser in app/parse.py crashes on empty input"), assistant("I see.")], "clear"),
        ([user("the login page is broken")], "clear"),
        ([assistant("The test test_parse_empty fails with IndexError.")], "clear"),
        ([user("look at the cache"), assistant("Done.")], "clear"),
        (
            [ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "list_dir", "{}"),))],
            "clear",
        ),
        ([ChatMessage("tool", "a.py\nb.py", tool_call_id="c1")], "clear"),
        ([user("hi"), assistant("Hello! How can I help you today?")], "ambiguous"),
        ([user("fix it"), assistant("")], "ambiguous"),
        ([user("thanks"), assistant("You're welcome.")], "ambiguous"),
    ],
)
def test_context_resolves_the_pronoun(history: list[ChatMessage], verdict: str) -> None:
    assert classify([SYSTEM, *history, user("fix it")]) == verdict


def test_system_prompt_does_not_resolve_the_pronoun() -> None:
    system = ChatMessage("system", "Workspace: /srv/repo with app/main.py and a failing TypeError test.")
    assert classify([system, user("make it better")]) == "ambiguous"


def test_no_user_message_is_clear() -> None:
    assert classify([]) == "clear"
    assert classify([SYSTEM, assistant("hello")]) == "clear"


def _check_clarification(text: str) -> list[str]:
    assert text.count("?") == 1
    numbered = [line for line in text.splitlines() if re.match(r"^\d+\. \S", line)]
    assert 2 <= len(numbered) <= 4
    assert [line.split(".")[0] for line in numbered] == [str(n) for n in range(1, len(numbered) + 1)]
    return text.splitlines()


@pytest.mark.parametrize(
    ("text", "verb"),
    [
        ("fix it", "fix"),
        ("make it better", "improve"),
        ("make it work", "fix"),
        ("clean this up", "clean up"),
        ("refactor it", "refactor"),
        ("update them", "update"),
        ("do that", "do"),
    ],
)
def test_clarification_shape_and_verb(text: str, verb: str) -> None:
    lines = _check_clarification(clarification([SYSTEM, user(text)]))
    assert lines[0].startswith(f"What would you like me to {verb}?")
    assert "number" in lines[-1]


def test_clarification_without_user_message() -> None:
    _check_clarification(clarification([]))


def test_research_prompt_is_read_only() -> None:
    lowered = RESEARCH_PROMPT.lower()
    assert "read-only" in lowered
    assert "do not" in lowered
    assert "report" in lowered


class FakeProvider:
    name = "fake"

    def __init__(self, reply: str = "", error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.requests: list[ModelRequest] = []

    def models(self) -> tuple[str, ...]:
        return ("m",)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        for piece in (self.reply[:3], self.reply[3:]):
            if piece:
                yield TextDelta(piece)
        yield ModelFinished("stop", Usage())

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("AMBIGUOUS", "ambiguous"),
        ("ambiguous.", "ambiguous"),
        ("<think>the user says fix it, CLEAR? no</think>AMBIGUOUS", "ambiguous"),
        ("CLEAR", "clear"),
        ("Clear", "clear"),
        ("NOT AMBIGUOUS", "clear"),
        ("unambiguous", "clear"),
        ("CLEAR or AMBIGUOUS", "clear"),
        ("", "clear"),
        ("I think the user wants a poem.", "clear"),
    ],
)
def test_classify_with_model_parses_the_answer(reply: str, verdict: str) -> None:
    provider = FakeProvider(reply)
    messages = [SYSTEM, user("hello"), assistant("Hi!"), user("fix it")]
    assert asyncio.run(classify_with_model(provider, "m", messages)) == verdict
    (request,) = provider.requests
    assert request.model == "m"
    assert request.stream is False
    assert request.tools == ()
    assert [m.role for m in request.messages] == ["system", "user"]
    assert "CLEAR" in request.messages[0].content and "AMBIGUOUS" in request.messages[0].content
    assert "fix it" in request.messages[1].content
    assert "Hi!" in request.messages[1].content


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("fix it", "ambiguous"), ("read README.md", "clear")],
)
def test_classify_with_model_falls_back_on_errors(text: str, verdict: str) -> None:
    provider = FakeProvider(error=RuntimeError("upstream down"))
    assert asyncio.run(classify_with_model(provider, "m", [user(text)])) == verdict


def test_classify_with_model_without_user_message_makes_no_call() -> None:
    provider = FakeProvider("AMBIGUOUS")
    assert asyncio.run(classify_with_model(provider, "m", [SYSTEM])) == "clear"
    assert provider.requests == []
