"""Starts a run's agent turn and records it: the seam HTTP (and later the TUI) drive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from app.agent.loop import AgentEvent, TextChunk, TurnSpec, run_turn
from app.agent.recorder import RunRecorder
from app.agent.tools.base import ToolContext
from app.agent.tools.registry import ToolRegistry
from app.commands import StartRun
from app.commands.execute import Executor
from app.providers.base import ChatMessage
from app.providers.catalog import ResolvedModel

__all__ = ["TurnRunner"]


class TurnRunner:
    def __init__(self, executor: Executor, tools: ToolRegistry, workspace: Path, max_steps: int) -> None:
        self._executor = executor
        self._tools = tools
        self._context = ToolContext(workspace=workspace.resolve())
        self._max_steps = max_steps

    async def run(
        self,
        run_id: UUID,
        model: ResolvedModel,
        messages: tuple[ChatMessage, ...],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[AgentEvent]:
        await self._executor.execute(
            StartRun(run_id=run_id, at=datetime.now(UTC), model=model.id, message_count=len(messages))
        )
        recorder = RunRecorder(self._executor, run_id)
        spec = TurnSpec(
            provider=model.provider,
            model=model.model,
            messages=messages,
            tools=self._tools,
            tool_context=self._context,
            max_steps=self._max_steps,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        async for event in run_turn(spec, recorder):
            if isinstance(event, TextChunk):
                await recorder.content(event.text)
            else:
                await recorder.flush()
            yield event
