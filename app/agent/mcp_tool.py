"""One remote MCP tool seen through the agent's `Tool` contract, plus result rendering."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Protocol

from mcp import types

from app.agent.tools.base import ToolContext, ToolResult
from app.providers.base import ToolSchema

__all__ = ["MAX_CONTENT_CHARS", "McpCaller", "McpTool", "render_result", "tool_name", "unavailable"]

MAX_NAME_CHARS = 64  # OpenAI function names: ^[A-Za-z0-9_-]{1,64}$
MAX_CONTENT_CHARS = 100_000  # what one call may put in front of the model
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpCaller(Protocol):
    """The hub side of a tool: one server's connection."""

    async def call(self, tool: str, args: dict[str, Any]) -> ToolResult: ...


def tool_name(server_id: str, tool: str) -> str:
    """``mcp__<id>__<tool>`` made safe for a function name; long names end in a short hash."""
    full = f"mcp__{server_id}__{tool}"
    safe = _UNSAFE.sub("_", full)
    if len(safe) <= MAX_NAME_CHARS:
        return safe
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    return f"{safe[: MAX_NAME_CHARS - 9]}_{digest}"


def is_mutating(tool: types.Tool) -> bool:
    """Everything may write unless the server promises ``readOnlyHint: true``."""
    return not (tool.annotations is not None and tool.annotations.read_only_hint is True)


class McpTool:
    """A remote tool; `run` forwards to the server's connection, which never raises."""

    def __init__(self, server_id: str, remote: types.Tool, caller: McpCaller) -> None:
        self.remote_name = remote.name
        self.server_id = server_id
        self.schema = ToolSchema(
            name=tool_name(server_id, remote.name),
            description=remote.description or remote.title or f"{remote.name} (MCP server {server_id!r})",
            parameters=dict(remote.input_schema) or {"type": "object", "properties": {}},
        )
        self.mutating = is_mutating(remote)
        self._caller = caller

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self._caller.call(self.remote_name, args)

    def __repr__(self) -> str:
        return f"McpTool({self.schema.name!r}, mutating={self.mutating})"


def unavailable(server_id: str, reason: str) -> ToolResult:
    return ToolResult(
        ok=False,
        content=f"error: MCP server {server_id!r} is unavailable: {reason}",
        error_kind="unavailable",
    )


def render_result(result: types.CallToolResult) -> ToolResult:
    """Text blocks joined by newlines; other blocks become short placeholders."""
    text = "\n".join(_block_text(block) for block in result.content)
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False)
    if len(text) > MAX_CONTENT_CHARS:
        cut = len(text) - MAX_CONTENT_CHARS
        text = f"{text[:MAX_CONTENT_CHARS]}\n[... {cut} more characters cut]"
    if result.is_error:
        return ToolResult(ok=False, content=f"error: {text or 'the tool reported an error'}")
    return ToolResult(ok=True, content=text)


def _block_text(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.EmbeddedResource):
        text = getattr(block.resource, "text", None)
        return text if isinstance(text, str) else f"[binary resource {block.resource.uri}]"
    if isinstance(block, types.ResourceLink):
        return f"[resource {block.uri}]"
    mime = getattr(block, "mime_type", "")
    return f"[{block.type} content {mime}]".replace(" ]", "]")
