"""`bmo/local`: the deterministic, offline, rule-based agent model.

The decisions live in `local_rules.plan_reply` (pure); this module only turns
a plan into the provider event stream: one tool call, or text deltas, then
exactly one `ModelFinished`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

from app.providers.base import (
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from app.providers.local_rules import plan_reply

__all__ = ["CHARS_PER_TOKEN", "LocalProvider", "chunk_text", "estimate_tokens"]

CHARS_PER_TOKEN = 4
_WORDS_PER_CHUNK = 4
# Split after whitespace that precedes a word, so each piece is "word<space>".
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


class LocalProvider:
    """The `bmo` provider serving the single model `local`."""

    name: str = "bmo"

    def models(self) -> tuple[str, ...]:
        return ("local",)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        plan = plan_reply(request.messages, {tool.name for tool in request.tools})
        prompt_tokens = estimate_tokens(sum(len(m.content) for m in request.messages))
        if plan.tool_call is not None:
            call = plan.tool_call
            yield ToolCallRequested(call)
            used = estimate_tokens(len(call.name) + len(call.arguments))
            yield ModelFinished("tool_calls", Usage(prompt_tokens, used))
            return
        text, reason = _apply_max_tokens(plan.text, request.max_tokens)
        for chunk in chunk_text(text):
            # Yield to the loop between chunks so a cancelled run stops promptly.
            await asyncio.sleep(0)
            yield TextDelta(chunk)
        yield ModelFinished(reason, Usage(prompt_tokens, estimate_tokens(len(text))))

    async def aclose(self) -> None:
        """Nothing to release: no connections, no files."""


def estimate_tokens(chars: int) -> int:
    """About four characters a token, rounded up, never below one."""
    return max(1, -(-chars // CHARS_PER_TOKEN))


def chunk_text(text: str, words: int = _WORDS_PER_CHUNK) -> Iterator[str]:
    """Split into pieces of a few words whose concatenation is exactly `text`."""
    pieces = [piece for piece in _WORD_BOUNDARY.split(text) if piece]
    for start in range(0, len(pieces), words):
        yield "".join(pieces[start : start + words])


def _apply_max_tokens(text: str, max_tokens: int | None) -> tuple[str, str]:
    if max_tokens is None:
        return text, "stop"
    budget = max(0, max_tokens) * CHARS_PER_TOKEN
    if len(text) <= budget:
        return text, "stop"
    return text[:budget], "length"
