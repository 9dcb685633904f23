"""Open WebUI background tasks: one plain model call, no tools, no session."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from app.agent.tasks import normalize_task_answer
from app.providers.base import ChatMessage, ModelFinished, ModelRequest, TextDelta, Usage
from app.providers.catalog import ResolvedModel

__all__ = ["TaskAnswer", "answer_task"]


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    text: str  # the JSON document Open WebUI expects
    usage: Usage
    latency_ms: float
    finish_reason: str


async def answer_task(
    model: ResolvedModel, messages: Sequence[ChatMessage], kind: str, max_tokens: int | None = None
) -> TaskAnswer:
    started = time.perf_counter()
    request = ModelRequest(model=model.model, messages=tuple(messages), max_tokens=max_tokens, stream=False)
    texts: list[str] = []
    finished = ModelFinished("stop", Usage())
    async for event in model.provider.stream(request):
        if isinstance(event, TextDelta):
            texts.append(event.text)
        elif isinstance(event, ModelFinished):
            finished = event
    return TaskAnswer(
        text=normalize_task_answer(kind, "".join(texts)),
        usage=finished.usage,
        latency_ms=(time.perf_counter() - started) * 1000,
        finish_reason=finished.finish_reason,
    )
