"""The composition root: the only place that wires things together.

Only entry points (the granian factory, the CLI) import this module.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.domain import DomainEvent

from app.agent.chat import ChatService
from app.agent.drain import Drain
from app.agent.lifecycle import RouteDefaults
from app.agent.permissions import PermissionGate
from app.agent.question_block import QuestionView
from app.agent.review_links import ReviewLinks, load_review_secret
from app.agent.sessions import SessionService
from app.agent.tools.process_guard import GroupRecords, tool_groups_dir
from app.agent.tools.registry import ToolRegistry, all_builtin_tools
from app.agent.turns import TurnPolicy, TurnRunner
from app.commands.execute import Executor
from app.config import Provider, Settings
from app.events.faults import ENV_FAULTS
from app.events.location import ENV_INSTANCE, store_url
from app.events.run import Fired
from app.events.select import open_event_store
from app.events.store import EventStore
from app.events.system import persistence_recovered
from app.events.writer import EventWriter, PersistenceState
from app.http.app import create_litestar
from app.http.asgi import BmoAsgi, TokenCheck
from app.http.deps import HttpDeps
from app.http.identity import TrustedProxies
from app.http.stall import StallWatch
from app.net import is_loopback_host, parse_addr
from app.projections.db import read_db_path
from app.projections.follower import ProjectionFollower
from app.projections.posture import BindPosture
from app.projections.runner import ProjectionRunner
from app.projections.select import projection_follower, projection_runner, read_connection
from app.providers.anthropic import AnthropicProvider
from app.providers.base import ChatProvider
from app.providers.catalog import ModelCatalog
from app.providers.local import LocalProvider
from app.providers.openai import OpenAIProvider
from app.redaction import Redactor, server_secrets
from app.telemetry import Records, log_path
from app.tracing import build_tracing

__all__ = ["Bind", "Runtime", "build_asgi", "is_loopback_host", "parse_addr"]


@dataclass(frozen=True, slots=True)
class Bind:
    host: str
    port: int
    token_digest: str | None  # SHA-256 hex of the bearer token; the plaintext is never needed here

    @property
    def addr(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def posture(self) -> BindPosture:
        return BindPosture(addr=self.addr, loopback=is_loopback_host(self.host), auth=bool(self.token_digest))


@dataclass
class Runtime:
    """Everything a serving process owns; started and stopped by the lifespan."""

    settings: Settings
    data_dir: Path
    store: EventStore
    writer: EventWriter
    executor: Executor
    projector: ProjectionRunner | ProjectionFollower
    records: Records
    providers: list[ChatProvider] = field(default_factory=list)
    mcp: Any = None  # McpHub, imported only when [mcp] servers are configured (slow import)
    sessions: SessionService | None = None
    drain: Drain = field(default_factory=lambda: Drain(30.0))
    liveness: Any = None  # Liveness, on a shared (PostgreSQL) store only
    baseline: int = 0  # store head at start: reads wait for the projector to pass it
    _tools: ToolRegistry | None = None

    async def start(self) -> None:
        self.drain.install(asyncio.get_running_loop())
        self.baseline = await asyncio.to_thread(self.store.max_notification_id)
        self.writer.start()
        self.projector.start()
        if self.liveness is not None:
            self.liveness.start()
        if self.mcp is not None:
            await self.mcp.start()
        tune_collector()

    async def stop(self) -> None:
        if self.sessions is not None:  # deferred runs have no connection granian waits for: drain them here
            await self.sessions.aclose(self._drain_left())
        if self.liveness is not None:  # after the drain: the lease covers runs that were still ending
            await self.liveness.stop()
        if self.mcp is not None:
            await self.mcp.aclose()
        await self.writer.close()
        await self.projector.stop()
        for provider in self.providers:
            await provider.aclose()
        self.store.close()
        self.records.close()

    def _drain_left(self) -> float:
        """Seconds of the shutdown deadline still left (none once it passed or without a signal)."""
        if self.drain.started_at is None or self.drain.interrupted:
            return 0.0
        return max(0.0, self.drain.started_at + self.drain.timeout_s - time.monotonic())

    def tools(self) -> ToolRegistry:
        """Built-in tools plus every ready MCP tool (built once MCP servers are up)."""
        if self._tools is None:
            mcp_tools = self.mcp.tools() if self.mcp is not None else []
            builtin = all_builtin_tools(
                passthrough=self.settings.options.tool_env_passthrough,
                records=GroupRecords(tool_groups_dir(self.data_dir)),
            )
            redact = Redactor(server_secrets(self.settings, os.environ))
            self._tools = ToolRegistry([*builtin, *mcp_tools], redact)
        return self._tools

    async def settle(self, timeout: float = 2.0) -> None:
        """Before a read: this process's writes made until now are saved and projected.

        Only what was submitted before the read is waited for, never later client
        writes: an operator's read must not wait behind the streams (bounded by
        `timeout` in any case).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target = max(self.baseline, await self.writer.saved_through(timeout))
        await self.projector.wait_for(target, max(0.0, deadline - loop.time()))


# The cyclic collector's thresholds for a serving process: see `tune_collector`.
GC_THRESHOLDS = (100, 20, 1000)


def tune_collector() -> None:
    """Freeze the start-up objects and collect young objects often, the oldest rarely.

    Once per serving process, after start-up (never at import time). Measured in the
    worker under 500 open streams (tests/reliability/test_load.py, 45 s runs): with
    CPython's defaults (700, 10, 10), gen-0 collections found 13,000-68,000 young
    objects, not 700, and took up to 28-43 ms of CPU; gen-1 collections found
    60,000-100,000 and took 65-86 ms; they were the slowest operator reads and
    `/healthz` probes. The gen-0 counter is allocations *minus deallocations*: while
    streams that live 6-10 s keep being born and dying, the two nearly cancel, so a
    collection comes late and the young generation holds seconds of stream state
    (coroutines, async generators, cells, contexts). Almost none of it is garbage
    (242 gen-0 collections freed 116 objects: requests' objects die by refcount), so
    the work is scanning live state. A gen-0 threshold of 100 collects before that
    state piles up (gen 0 at most ~12,000 objects, at most 2 ms of CPU), a gen-1
    threshold of 20 keeps gen 1 under ~20,000 (at most 10 ms), and a gen-2 threshold
    of 1000 makes the full collection (100,000+ live objects, 90-170 ms; every ~23 s
    with 100) come every few minutes instead. The cycles that do occur wait that
    long in gen 2: a few thousand objects a minute under that load. The collector's
    CPU fell by a third. Figures: docs/reliability.md, "third pass".
    """
    gc.collect()
    gc.freeze()  # start-up objects (modules, the app) live forever: never rescan them
    gc.set_threshold(*GC_THRESHOLDS)


def build_runtime(settings: Settings, data_dir: Path, env: Mapping[str, str] | None = None) -> Runtime:
    env = env if env is not None else {}
    faults = env.get(ENV_FAULTS)
    store = open_event_store(
        data_dir, Path(faults) if faults else None, store_url(settings, env), instance_id(env)
    )
    records = Records(log_path(data_dir), tracing=build_tracing(settings.options.telemetry.otel, env))
    projector: ProjectionRunner | ProjectionFollower
    if env.get("BMO_PROJECTOR") == "external":  # `bmo serve` runs it in its own process
        projector = projection_follower(store, read_db_path(data_dir))
    else:
        projector = projection_runner(
            store,
            read_db_path(data_dir),
            ledger_capacity=settings.options.openai_compat.ledger_capacity,
        )
    writer = EventWriter(
        store, on_commit=projector.notify, unavailable_wait_s=settings.options.store.unavailable_wait_s
    )
    writer.on_failure = lambda events, error: _persist_failed(records, events, error)
    writer.on_recovered = lambda state: _persistence_recovered(records, writer, state)
    return Runtime(
        settings=settings,
        data_dir=data_dir,
        store=store,
        writer=writer,
        executor=Executor(store, writer),
        projector=projector,
        records=records,
        drain=Drain(settings.options.http_server.shutdown_timeout_s),
    )


def instance_id(env: Mapping[str, str]) -> str:
    """This serving instance's id: `bmo serve` names it once for all its workers."""
    return env.get(ENV_INSTANCE) or uuid4().hex


def _persist_failed(records: Records, events: Sequence[DomainEvent], error: str) -> None:
    """One non-terminal `persist_failed` record per request whose events wait in the outbox."""
    runs: dict[str, Fired | None] = {}
    for event in events:
        if type(event).__module__ == Fired.__module__:
            key = event.originator_id.hex
            if runs.get(key) is None:
                runs[key] = event if isinstance(event, Fired) else None
    for request_id, fired in runs.items():
        records.action(
            outcome="persist_failed",
            terminal=False,
            request_id=request_id,
            session_id=fired.session_id if fired else "",
            route=fired.route if fired else "",
            error=error,
        )


def _persistence_recovered(records: Records, writer: EventWriter, state: PersistenceState) -> None:
    records.emit(
        "info",
        "openai_compat.persistence_recovered",
        flushed_events=state.incident_flushed,
        overflowed_events=state.incident_overflowed,
        failures=state.failures,
    )
    writer.submit(
        [
            persistence_recovered(
                state.incident_flushed, state.incident_overflowed, state.failures, state.last_error or ""
            )
        ]
    )


def build_provider(name: str, config: Provider) -> ChatProvider:
    if config.type == "anthropic":
        return AnthropicProvider(name, config)
    return OpenAIProvider(name, config)


def build_asgi(
    settings: Settings,
    *,
    data_dir: Path,
    bind: Bind,
    version: str = "0",
    proxies: TrustedProxies | None = None,
    env: Mapping[str, str] | None = None,
) -> BmoAsgi:
    runtime = build_runtime(settings, data_dir, env)
    providers: dict[str, ChatProvider] = {"bmo": LocalProvider()}
    for name, config in settings.providers.items():
        providers[name] = build_provider(name, config)
    runtime.providers.extend(providers.values())
    if settings.mcp:
        from app.agent.mcp import McpHub

        runtime.mcp = McpHub(
            settings.mcp,
            passthrough=settings.options.tool_env_passthrough,
            records=GroupRecords(tool_groups_dir(data_dir)),
        )
    compat = settings.options.openai_compat
    catalog = ModelCatalog(providers, compat.models)
    workspace = Path(settings.options.workspace).expanduser()
    policy = TurnPolicy(
        tool_policy=compat.tool_policy,
        allowed_tools=frozenset(settings.permissions.allowed_tools),
        max_steps=compat.max_steps,
        show_tool_activity=compat.show_tool_activity,
    )
    gate = PermissionGate(runtime.executor, timeout_s=compat.permission_timeout_s)
    links = ReviewLinks(compat.public_url, load_review_secret(data_dir, compat.review_secret))
    turns = TurnRunner(
        runtime.executor,
        runtime.tools,
        workspace,
        policy,
        gate,
        tracing=runtime.records.tracing,
        questions=QuestionView(links, compat.permission_timeout_s),
    )
    defaults = RouteDefaults(
        tool_policy=compat.tool_policy,
        ambiguity_action=compat.ambiguity_action,
        default_model=settings.options.model,
    )
    runtime.sessions = SessionService(
        executor=runtime.executor,
        turns=turns,
        catalog=catalog,
        records=runtime.records,
        defaults=defaults,
        max_queue_depth=compat.max_queue_depth,
    )
    if getattr(runtime.store, "url", ""):  # a shared store: hold a lease, sweep the instances gone
        from app.liveness import Liveness

        runtime.liveness = Liveness(
            store=runtime.store,  # type: ignore[arg-type]
            executor=runtime.executor,
            sessions=runtime.sessions,
            records=runtime.records,
            addr=bind.addr,
            lease_s=settings.options.store.lease_s,
        )
    deps = HttpDeps(
        settings=settings,
        catalog=catalog,
        turns=turns,
        read_conn=read_connection(runtime.store, read_db_path(data_dir)),
        persistence=runtime.writer.state,
        projector=runtime.projector,
        store=runtime.store,
        bind=bind.posture(),
        started_at=int(time.time()),
        executor=runtime.executor,
        sessions=runtime.sessions,
        tracing=runtime.records.tracing,
        chat=ChatService(
            settings=settings,
            catalog=catalog,
            turns=turns,
            executor=runtime.executor,
            sessions=runtime.sessions,
        ),
        settle=runtime.settle,
        drain=runtime.drain,
    )
    inner = create_litestar(deps, on_startup=[runtime.start], on_shutdown=[runtime.stop], version=version)
    return BmoAsgi(
        inner,
        tokens=TokenCheck.from_digest(bind.token_digest),
        executor=runtime.executor,
        records=runtime.records,
        defaults=defaults,
        session_fallbacks=compat.session_header_fallbacks,
        proxies=proxies,
        drain=runtime.drain,
        stalls=StallWatch(settings.options.http_server.stall_timeout_s),
    )
