"""What HTTP handlers may use: read models, the turn runner, config. Built by bootstrap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.agent.chat import ChatService
from app.agent.drain import Drain
from app.agent.turns import TurnRunner
from app.config import Settings
from app.events.writer import PersistenceState
from app.projections.posture import BindPosture
from app.providers.catalog import ModelCatalog

__all__ = ["HttpDeps"]


@dataclass(frozen=True, slots=True)
class HttpDeps:
    settings: Settings
    catalog: ModelCatalog
    turns: TurnRunner
    read_conn: Any  # sqlite3.Connection on the read-model DB (event-loop thread only)
    persistence: PersistenceState
    projector: Any  # ProjectionRunner: position / wait_for
    store: Any  # EventStore: max_notification_id / check_writable (readiness only)
    bind: BindPosture
    started_at: int
    executor: Any  # Executor: command handlers only
    sessions: Any  # SessionService
    tracing: Any  # Tracing: export counters for posture
    chat: ChatService  # the chat use case: every decision of POST /v1/chat/completions
    settle: Callable[[], Awaitable[None]]  # let the projector catch up (bounded)
    drain: Drain | None = None  # the process's shutdown: follow streams end when it interrupts
