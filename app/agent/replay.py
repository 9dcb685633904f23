"""A run's recorded output as agent events again: what resume streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from uuid import UUID

from eventsourcing.domain import DomainEvent

from app.agent.loop import AgentEvent, Done, Progress, TextChunk
from app.agent.question_block import QuestionView
from app.events.run import ContentAppended, Finished, PermissionAsked, PermissionDecided
from app.providers.base import Usage

__all__ = ["StreamReader", "replay_run"]

StreamReader = Callable[[UUID, int], Awaitable[Sequence[DomainEvent]]]  # Executor.events


async def replay_run(
    read: StreamReader, run_id: UUID, *, poll_s: float = 0.1, questions: QuestionView | None = None
) -> AsyncIterator[AgentEvent]:
    """Replay from the start, then follow live until the run's terminal event.

    Permission questions and their answers are rebuilt from their events (with
    fresh links), exactly where the live stream showed them.
    """
    yield Progress()  # the run exists: the response may start before its first content
    version = 0
    while True:
        events = await read(run_id, version)
        for event in events:
            version = event.originator_version
            if isinstance(event, ContentAppended):
                yield TextChunk(event.text, activity=event.role == "activity")
            elif questions is not None and isinstance(event, PermissionAsked):
                yield TextChunk(questions.block(event), transient=True)
            elif questions is not None and isinstance(event, PermissionDecided):
                yield TextChunk(questions.decided(event), transient=True)
            elif isinstance(event, Finished):
                usage = Usage(event.prompt_tokens, event.completion_tokens)
                yield Done(event.finish_reason or "stop", usage, outcome="resumed")
                return
        if not events:
            await asyncio.sleep(poll_s)
