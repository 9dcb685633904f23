"""MCP servers from ``[mcp.<id>]`` as agent tools named ``mcp__<id>__<tool>``.

Connection ownership: the mcp client transports and `ClientSession` are anyio
context managers whose task groups / cancel scopes must be exited by the task
that entered them. Each connection therefore gets a dedicated owner task that
enters them on an `AsyncExitStack`, publishes the session, parks until asked to
close and then unwinds the stack itself. Tool calls use the published session
directly from the caller's task (its anyio memory streams are not bound to a
task), so no request queue is needed and a caller's timeout or cancellation
only abandons its own request.

A connection that breaks (process exit, closed stream) or a call that times out
marks the server dead; later calls get an "unavailable" result at once, except
that the first call after a death may spend up to `timeout` on one reconnect
(`MAX_RESTARTS` per server for the hub's lifetime).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import httpx2
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from app.agent.mcp_tool import McpTool, render_result, tool_name, unavailable
from app.agent.tools.base import Tool, ToolResult
from app.agent.tools.environment import tool_environment
from app.agent.tools.process_guard import MARKER_VAR, GroupRecords, launcher_argv
from app.config import McpServer

__all__ = ["MAX_RESTARTS", "McpHub"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 1  # reconnects per server per hub, so a crash-looping server cannot respawn forever
CLOSE_GRACE_S = 10.0  # stdio shutdown: stdin EOF, 2 s grace, SIGTERM, 2 s, SIGKILL
_MAX_PAGES = 100
_BROKEN = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, httpx2.TransportError)


class _Unavailable(Exception):
    """The server cannot take calls; the message is the reason."""


def describe(exc: BaseException) -> str:
    """A one-line reason, unwrapping the exception groups anyio raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED:
        return "connection closed (the server exited or dropped the connection)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Spawn:
    """How stdio servers are started: their environment's passthrough names and group records."""

    passthrough: tuple[str, ...] = ()
    records: GroupRecords | None = None


async def _open_session(
    stack: AsyncExitStack, cfg: McpServer, errlog: TextIO, spawn: _Spawn
) -> ClientSession:
    if cfg.type == "stdio":
        # The scrubbed base plus the server's own `env` table; never this process's secrets.
        # The launcher arms the parent-death signal; the marker and record let the next
        # start reap a server that outlived a killed bmo.
        marker = GroupRecords.new_marker()
        env = tool_environment(os.environ, spawn.passthrough, overrides={**cfg.env, MARKER_VAR: marker})
        if shutil.which(cfg.command, path=env.get("PATH")) is None:  # the launcher would hide this
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cfg.command)
        command, args = launcher_argv(cfg.command, list(cfg.args))
        params = StdioServerParameters(command=command, args=args, env=env)
        streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        if spawn.records is not None:
            record = spawn.records.add(marker)
            stack.callback(spawn.records.remove, record)
    elif cfg.type == "http":
        timeout = httpx2.Timeout(30.0, read=max(300.0, cfg.timeout))
        client = await stack.enter_async_context(httpx2.AsyncClient(headers=cfg.headers, timeout=timeout))
        streams = await stack.enter_async_context(streamable_http_client(cfg.url, http_client=client))
    else:
        streams = await stack.enter_async_context(
            sse_client(cfg.url, headers=cfg.headers, timeout=30.0, sse_read_timeout=max(300.0, cfg.timeout))
        )
    session = await stack.enter_async_context(ClientSession(*streams))
    await session.initialize()
    return session


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


class _Connection:
    """One live session, owned by its own task (see the module docstring)."""

    def __init__(self, label: str, cfg: McpServer, errlog: TextIO, spawn: _Spawn) -> None:
        self._label = label
        self._cfg = cfg
        self._errlog = errlog
        self._spawn = spawn
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.session: ClientSession | None = None

    async def open(self) -> list[types.Tool]:
        """Connect and list tools within the server's timeout.

        On failure the owner task is cancelled and unwinds in the background (a stdio
        process is stopped there); `close` waits for that.
        """
        ready: asyncio.Future[list[types.Tool]] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(ready), name=f"mcp:{self._label}")
        try:
            return await asyncio.wait_for(asyncio.shield(ready), self._cfg.timeout)
        except BaseException:
            self.retire()
            self._task.cancel()
            raise

    async def _own(self, ready: asyncio.Future[list[types.Tool]]) -> None:
        try:
            async with AsyncExitStack() as stack:
                session = await _open_session(stack, self._cfg, self._errlog, self._spawn)
                tools = await _list_tools(session)
                self.session = session
                ready.set_result(tools)
                await self._closing.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.debug("MCP server %s: connection ended: %s", self._label, describe(exc))
        finally:
            self.session = None
            if not ready.done():
                ready.cancel()

    def retire(self) -> None:
        """Ask the owner task to unwind; does not wait."""
        self.session = None
        self._closing.set()

    async def close(self) -> None:
        """Unwind and wait for it (stdio: the process is gone afterwards); bounded."""
        self.retire()
        task = self._task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE_S)
        if not done:
            log.warning("MCP server %s: shutdown is slow; cancelling it", self._label)
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_GRACE_S)


class _Server:
    """One configured server: its status, tools and current connection."""

    def __init__(self, server_id: str, cfg: McpServer, errlog: TextIO | None, spawn: _Spawn) -> None:
        self.id = server_id
        self._spawn = spawn
        self.cfg = cfg
        self.status = "failed: not started" if cfg.enabled else "disabled"
        self.remote_tools: list[types.Tool] = []
        self._errlog = errlog
        self._conn: _Connection | None = None
        self._retired: list[_Connection] = []
        self._restarts = MAX_RESTARTS
        self._lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return self.status == "ready" or (self.status.startswith("dead") and self._restarts > 0)

    async def start(self) -> None:
        try:
            self.remote_tools = await self._connect()
        except Exception as exc:
            self.status = f"failed: {describe(exc)}"
            log.warning("MCP server %s failed to start: %s", self.id, self.status[8:])
        else:
            self.status = "ready"

    async def _connect(self) -> list[types.Tool]:
        conn = _Connection(self.id, self.cfg, self._errlog or sys.stderr, self._spawn)
        try:
            tools = await conn.open()
        except BaseException:
            self._retired.append(conn)  # still unwinding; `close` waits for it
            raise
        self._conn = conn
        return tools

    async def call(self, tool: str, args: dict[str, Any]) -> ToolResult:
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.cfg.timeout):
                conn, session = await self._session()
                result = await session.call_tool(tool, args)
        except _Unavailable as exc:
            return unavailable(self.id, str(exc))
        except TimeoutError:
            return self._broken(conn, f"{tool!r} got no answer within {self.cfg.timeout:g}s")
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                return self._broken(conn, describe(exc))
            return ToolResult(ok=False, content=f"error: MCP server {self.id!r} rejected {tool!r}: {exc}")
        except _BROKEN as exc:
            return self._broken(conn, describe(exc))
        except Exception as exc:  # e.g. a result that fails its output schema; the session is fine
            return ToolResult(ok=False, content=f"error: MCP tool {tool!r} failed: {describe(exc)}")
        return render_result(result)

    async def _session(self) -> tuple[_Connection, ClientSession]:
        conn = self._conn
        if conn is not None and conn.session is not None:
            return conn, conn.session
        async with self._lock:  # one reconnect even when several calls arrive at once
            conn = self._conn
            if conn is None or conn.session is None:
                conn = await self._reconnect()
            if conn.session is None:
                raise _Unavailable("connection closed")
            return conn, conn.session

    async def _reconnect(self) -> _Connection:
        reason = self.status.partition(": ")[2] or self.status
        if self._restarts <= 0:
            raise _Unavailable(reason)
        self._restarts -= 1
        log.info("MCP server %s: reconnecting after: %s", self.id, reason)
        try:
            await self._connect()
        except Exception as exc:
            self.status = f"dead: reconnect failed: {describe(exc)}"
            raise _Unavailable(self.status[6:]) from None
        except asyncio.CancelledError:  # the call's timeout, or the run was cancelled
            self.status = "dead: reconnect did not finish"
            raise
        self.status = "ready"
        assert self._conn is not None
        return self._conn

    def _broken(self, conn: _Connection | None, reason: str) -> ToolResult:
        """Mark dead and let the old connection unwind in the background."""
        if conn is not None and conn is self._conn:
            self.status = f"dead: {reason}"
            log.warning("MCP server %s is dead: %s", self.id, reason)
            self._conn = None
            conn.retire()
            self._retired.append(conn)
        return unavailable(self.id, reason)

    async def close(self) -> None:
        self._restarts = 0
        conns = [*self._retired, *([self._conn] if self._conn else [])]
        self._conn, self._retired = None, []
        if self.status == "ready":
            self.status = "dead: closed"
        await asyncio.gather(*(conn.close() for conn in conns))


class McpHub:
    """Every configured MCP server; `start` once, hand `tools()` to the registry, `aclose` at the end."""

    def __init__(
        self,
        servers: Mapping[str, McpServer],
        *,
        errlog: TextIO | None = None,
        passthrough: Iterable[str] = (),
        records: GroupRecords | None = None,
    ) -> None:
        """``errlog`` receives stdio servers' stderr (default: this process's stderr);
        ``passthrough`` names environment variables stdio servers get on top of the base;
        ``records`` keeps their group records for the orphan sweep."""
        spawn = _Spawn(tuple(passthrough), records)
        self._servers = {sid: _Server(sid, cfg, errlog, spawn) for sid, cfg in servers.items()}

    async def start(self) -> None:
        """Connect every enabled server concurrently; failures only show in `status`."""
        await asyncio.gather(*(s.start() for s in self._servers.values() if s.cfg.enabled))

    def tools(self) -> list[Tool]:
        found: list[Tool] = []
        names: set[str] = set()
        for server in self._servers.values():
            if not server.usable:
                continue
            for remote in server.remote_tools:
                if {remote.name, tool_name(server.id, remote.name)} & set(server.cfg.disabled_tools):
                    continue
                tool = McpTool(server.id, remote, server)
                if tool.schema.name in names:
                    log.warning("MCP tool %s: name clash after sanitizing; skipped", tool.schema.name)
                    continue
                names.add(tool.schema.name)
                found.append(tool)
        return found

    def status(self) -> dict[str, str]:
        return {sid: server.status for sid, server in self._servers.items()}

    async def aclose(self) -> None:
        await asyncio.gather(*(server.close() for server in self._servers.values()))
