"""`read_file`: a window of lines from one UTF-8 text file in the workspace."""

from __future__ import annotations

import asyncio
import codecs
import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.providers.base import ToolSchema

__all__ = ["DEFAULT_LIMIT", "MAX_BYTES", "ReadFile"]

MAX_BYTES = 256 * 1024
DEFAULT_LIMIT = 400


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_LIMIT


class ReadFile:
    schema = ToolSchema(
        name="read_file",
        description=(
            "Read a UTF-8 text file from the workspace. Returns up to `limit` lines "
            "starting at line `offset` (0-based); says when the output is truncated."
        ),
        parameters={
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File relative to the workspace root."},
                "offset": {"type": "integer", "minimum": 0, "default": 0},
                "limit": {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    )
    mutating: bool = False

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        shown = display_path(ctx.workspace, target)
        text, size, cut = await asyncio.to_thread(_read_text, target, shown)
        return ToolResult(ok=True, content=_window(text, parsed, size=size, cut=cut))


def _parse(args: dict[str, Any]) -> _Args:
    try:
        return msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"read_file: invalid arguments: {exc}") from None


def _read_text(target: Path, shown: str) -> tuple[str, int, bool]:
    """Return (text, file size, whether the byte cap cut the file)."""
    if target.is_dir():
        raise ToolError(f"read_file: {shown!r} is a directory (use list_dir)")
    if not target.exists():
        raise ToolError(f"read_file: {shown!r} does not exist")
    if not target.is_file():
        # FIFOs and devices could block or never end.
        raise ToolError(f"read_file: {shown!r} is not a regular file")
    try:
        with target.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ToolError(f"read_file: cannot read {shown!r}: {exc.strerror or exc}") from None
    cut = len(data) > MAX_BYTES
    data = data[:MAX_BYTES]
    if b"\x00" in data:
        raise ToolError(f"read_file: {shown!r} is a binary file")
    try:
        # The incremental decoder tolerates a multi-byte character split by the cap.
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=not cut)
    except UnicodeDecodeError:
        raise ToolError(f"read_file: {shown!r} is not UTF-8 text (binary?)") from None
    return text, size, cut


def _window(text: str, args: _Args, *, size: int, cut: bool) -> str:
    lines = text.splitlines(keepends=True)
    total = len(lines)
    if total == 0:
        return "[empty file]"
    if args.offset and args.offset >= total:
        return f"[offset {args.offset} is past the end of the file ({total} lines)]"
    chosen = lines[args.offset : args.offset + args.limit]
    body = "".join(chosen)
    end = args.offset + len(chosen)
    notes: list[str] = []
    if end < total:
        notes.append(
            f"[truncated: showing lines {args.offset + 1}-{end} of {total}; use offset={end} to read more]"
        )
    if cut:
        notes.append(f"[truncated: the file is {size} bytes; only the first {MAX_BYTES} bytes were read]")
    if notes:
        body = body + ("" if body.endswith("\n") or not body else "\n") + "\n".join(notes)
    return body
