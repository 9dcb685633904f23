"""The set of tools a run may call, and the one place a tool call is executed."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from app.agent.tools.base import Tool, ToolContext, ToolError, ToolResult
from app.agent.tools.bash import Bash
from app.agent.tools.edit_file import EditFile
from app.agent.tools.environment import KUBECTL_NAMES, tool_environment
from app.agent.tools.kubectl import Kubectl
from app.agent.tools.list_dir import ListDir
from app.agent.tools.process_guard import GroupRecords
from app.agent.tools.read_file import ReadFile
from app.agent.tools.search import Search
from app.agent.tools.web_fetch import WebFetch
from app.agent.tools.write_file import WriteFile
from app.providers.base import ToolCall, ToolSchema

__all__ = ["ToolRegistry", "all_builtin_tools", "builtin_tools"]

log = logging.getLogger(__name__)


def builtin_tools() -> list[Tool]:
    """Fresh instances of the read-only built-in tools."""
    return [ReadFile(), ListDir(), Search()]


def all_builtin_tools(
    env: Mapping[str, str] | None = None,
    passthrough: Iterable[str] = (),
    records: GroupRecords | None = None,
) -> list[Tool]:
    """Fresh instances of every built-in tool, read-only and mutating.

    Processes the tools start get the scrubbed base of `env` (default: this process's)
    plus the `passthrough` names, and are recorded in `records` for the orphan sweep.
    """
    source = env if env is not None else os.environ
    names = tuple(passthrough)
    base = tool_environment(source, names)
    kube = tool_environment(source, names, extra_names=KUBECTL_NAMES)
    return [
        ReadFile(),
        ListDir(),
        Search(env=base, records=records),
        WriteFile(),
        EditFile(),
        Bash(env=base, records=records),
        WebFetch(),
        Kubectl(env=kube, records=records),
    ]


class ToolRegistry:
    """Tools by name; `execute` turns every tool failure into an error result."""

    def __init__(self, tools: Iterable[Tool], redact: Callable[[str], str] | None = None) -> None:
        """`redact` removes known secrets from every result before anyone sees it."""
        by_name: dict[str, Tool] = {}
        for tool in tools:
            name = tool.schema.name
            if name in by_name:
                raise ValueError(f"duplicate tool name {name!r}")
            by_name[name] = tool
        self._tools = by_name
        self._redact = redact

    def schemas(self) -> tuple[ToolSchema, ...]:
        return tuple(tool.schema for tool in self._tools.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def read_only(self) -> ToolRegistry:
        """The same registry without mutating tools (research mode)."""
        return ToolRegistry((t for t in self._tools.values() if not t.mutating), self._redact)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    async def execute(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        """Run one call; the result is redacted here, the one path every tool result takes
        on its way to the event store, the client stream and the model."""
        result = await self._execute(call, ctx)
        if self._redact is None:
            return result
        return msgspec.structs.replace(result, content=self._redact(result.content))

    async def _execute(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return _error(f"unknown tool {call.name!r} (available: {known})")
        try:
            args = decode_arguments(call.arguments)
            return await tool.run(args, ctx)
        except ToolError as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug in a tool must not kill the run
            log.exception("tool %s crashed", call.name)
            return _error(f"{call.name} failed unexpectedly: {type(exc).__name__}: {exc}")


def decode_arguments(arguments: str) -> dict[str, Any]:
    """Decode a call's JSON arguments; an empty string means no arguments."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise ToolError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def _error(message: str) -> ToolResult:
    return ToolResult(ok=False, content=f"error: {message}")
