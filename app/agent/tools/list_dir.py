"""`list_dir`: the entries of one workspace directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.providers.base import ToolSchema

__all__ = ["MAX_ENTRIES", "ListDir"]

MAX_ENTRIES = 500
HIDDEN_NAMES = frozenset({".git"})


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    path: str = "."


class ListDir:
    schema = ToolSchema(
        name="list_dir",
        description=(
            "List the entries of a directory in the workspace, sorted by name. Directories end with '/'."
        ),
        parameters={
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "Directory relative to the workspace root.",
                    "default": ".",
                },
            },
            "additionalProperties": False,
        },
    )
    mutating: bool = False

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        content = await asyncio.to_thread(_list, ctx.workspace, target)
        return ToolResult(ok=True, content=content)


def _parse(args: dict[str, Any]) -> _Args:
    try:
        return msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"list_dir: invalid arguments: {exc}") from None


def _list(workspace: Path, target: Path) -> str:
    shown = display_path(workspace, target)
    if not target.exists():
        raise ToolError(f"list_dir: {shown!r} does not exist")
    if not target.is_dir():
        raise ToolError(f"list_dir: {shown!r} is not a directory (use read_file)")
    try:
        names = sorted(_entry_name(p) for p in target.iterdir() if p.name not in HIDDEN_NAMES)
    except OSError as exc:
        raise ToolError(f"list_dir: cannot read {shown!r}: {exc.strerror or exc}") from None
    if not names:
        return "(empty directory)"
    lines = names[:MAX_ENTRIES]
    omitted = len(names) - len(lines)
    if omitted:
        lines.append(f"[{omitted} more entries omitted; showing the first {MAX_ENTRIES}]")
    return "\n".join(lines)


def _entry_name(entry: Path) -> str:
    # is_dir() follows symlinks; a broken link simply lists as a file.
    return entry.name + "/" if entry.is_dir() else entry.name
