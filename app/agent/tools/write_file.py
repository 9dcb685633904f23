"""`write_file`: create or overwrite one UTF-8 text file in the workspace."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.providers.base import ToolSchema

__all__ = ["MAX_BYTES", "WriteFile", "write_bytes_no_follow"]

MAX_BYTES = 1024 * 1024


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    content: str


class WriteFile:
    schema = ToolSchema(
        name="write_file",
        description=(
            "Write a UTF-8 text file in the workspace, replacing it if it exists. "
            "Missing parent directories are created. At most 1 MiB."
        ),
        parameters={
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File relative to the workspace root."},
                "content": {"type": "string", "description": "The complete new file content."},
            },
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    )
    mutating: bool = True

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        data = parsed.content.encode("utf-8")
        if len(data) > MAX_BYTES:
            raise ToolError(f"write_file: content is {len(data)} bytes; the limit is {MAX_BYTES} bytes")
        # Resolving follows symlinks, so a link pointing out of the workspace is refused here.
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        shown = display_path(ctx.workspace, target)
        created = await asyncio.to_thread(_write, target, shown, data)
        verb = "created" if created else "overwrote"
        return ToolResult(ok=True, content=f"{verb} {shown} ({len(data)} bytes written)")


def _parse(args: dict[str, Any]) -> _Args:
    try:
        return msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"write_file: invalid arguments: {exc}") from None


def _write(target: Path, shown: str, data: bytes) -> bool:
    """Write `data` to `target`; return True when the file is new."""
    if target.is_dir():
        raise ToolError(f"write_file: {shown!r} is a directory")
    existed = target.exists()
    if existed and not target.is_file():
        # Opening a FIFO or device for writing could block or do damage.
        raise ToolError(f"write_file: {shown!r} is not a regular file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_no_follow(target, data)
    except OSError as exc:
        raise ToolError(f"write_file: cannot write {shown!r}: {exc.strerror or exc}") from None
    return not existed


def write_bytes_no_follow(target: Path, data: bytes) -> None:
    """Write a file without following a symlink at its last component.

    `target` is already resolved; O_NOFOLLOW closes the gap where a symlink is
    swapped in between the workspace check and the write.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
