"""Records a run's steps and streamed content as run events, through commands."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from app.agent.tools.base import ToolResult
from app.commands import AppendContent, RecordModelCall, RecordToolCall
from app.commands.execute import Executor
from app.providers.base import ToolCall, Usage
from app.tracing import Tracing

__all__ = ["RunRecorder"]

FLUSH_AT_CHARS = 2048  # content batches: few events per run, never one per token


class RunRecorder:
    def __init__(
        self, executor: Executor, run_id: UUID, tracing: Tracing | None = None, provider: str = ""
    ) -> None:
        self._executor = executor
        self._run_id = run_id
        self._tracing = tracing if tracing is not None else Tracing()
        self._provider = provider
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
        self._tracing.model_call(
            self._run_id.hex,
            provider=self._provider,
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=latency_ms,
            finish_reason=finish_reason,
            step=step,
        )
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
        self._tracing.tool_call(
            self._run_id.hex,
            name=call.name,
            ok=result.ok,
            duration_ms=duration_ms,
            call_id=call.id,
            step=step,
        )
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
