"""Records a run's steps and streamed content as run events, through commands."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from app.agent.tools.base import ToolResult
from app.commands import AppendContent, RecordModelCall, RecordToolCall
from app.commands.execute import Executor
from app.providers.base import ToolCall, Usage

__all__ = ["RunRecorder"]

FLUSH_AT_CHARS = 2048  # content batches: few events per run, never one per token


class RunRecorder:
    def __init__(self, executor: Executor, run_id: UUID) -> None:
        self._executor = executor
        self._run_id = run_id
        self._buffer: list[str] = []
        self._buffered = 0

    async def content(self, text: str) -> None:
        self._buffer.append(text)
        self._buffered += len(text)
        if self._buffered >= FLUSH_AT_CHARS:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        await self._executor.execute(AppendContent(run_id=self._run_id, at=_now(), text=text))

    async def model_called(
        self, *, step: int, model: str, usage: Usage, latency_ms: float, finish_reason: str
    ) -> None:
        await self.flush()  # keep content and steps in the order they happened
        await self._executor.execute(
            RecordModelCall(
                run_id=self._run_id,
                at=_now(),
                model=model,
                step=step,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                latency_ms=latency_ms,
                finish_reason=finish_reason,
            )
        )

    async def tool_called(self, *, step: int, call: ToolCall, result: ToolResult, duration_ms: float) -> None:
        await self._executor.execute(
            RecordToolCall(
                run_id=self._run_id,
                at=_now(),
                name=call.name,
                call_id=call.id,
                arguments=call.arguments,
                ok=result.ok,
                duration_ms=duration_ms,
                step=step,
            )
        )


def _now() -> datetime:
    return datetime.now(UTC)
