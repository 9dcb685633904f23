"""The loop's safety rails: recovery, continuation and repeat detection (SPEC §5)."""

from __future__ import annotations

from app.providers.base import ChatMessage, ToolCall

__all__ = [
    "MAX_CONTINUATIONS",
    "REPEAT_LIMIT",
    "RepeatGuard",
    "continue_prompt",
    "loop_note",
    "recovery_failed_message",
    "recovery_prompt",
]

MAX_CONTINUATIONS = 2
REPEAT_LIMIT = 3


def recovery_prompt() -> ChatMessage:
    return ChatMessage(
        "user",
        "You called tools but wrote no answer. Using the tool results above, "
        "answer my previous request now, in plain text.",
    )


def recovery_failed_message() -> str:
    return (
        "I ran the tools for this request but the model returned no answer, even after "
        "being asked again. Try rephrasing the request, or use a different model."
    )


def continue_prompt() -> ChatMessage:
    return ChatMessage("user", "Continue exactly where you stopped, without repeating anything.")


def loop_note(call: ToolCall) -> str:
    return (
        f"error: loop detected: you called {call.name} with the same arguments "
        f"{REPEAT_LIMIT} times in a row. It was not run again. Use the results you already "
        "have, or try something different."
    )


class RepeatGuard:
    """Counts identical consecutive tool calls (same name, same arguments)."""

    def __init__(self) -> None:
        self._last: tuple[str, str] | None = None
        self._count = 0

    def note(self, call: ToolCall) -> int:
        key = (call.name, call.arguments)
        self._count = self._count + 1 if key == self._last else 1
        self._last = key
        return self._count
