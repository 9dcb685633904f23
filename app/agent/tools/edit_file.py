"""`edit_file`: exact string replacement in one workspace text file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.agent.tools.write_file import MAX_BYTES, write_bytes_no_follow
from app.providers.base import ToolSchema

__all__ = ["EditFile"]


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    old_string: str
    new_string: str
    replace_all: bool = False


class EditFile:
    schema = ToolSchema(
        name="edit_file",
        description=(
            "Replace an exact string in a workspace text file. `old_string` must occur "
            "exactly once unless `replace_all` is true; include enough surrounding "
            "context to make it unique. Whitespace and line endings must match exactly."
        ),
        parameters={
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File relative to the workspace root."},
                "old_string": {"type": "string", "description": "The exact text to replace."},
                "new_string": {"type": "string", "description": "The replacement text."},
                "replace_all": {
                    "type": "boolean",
                    "default": False,
                    "description": "Replace every occurrence instead of requiring exactly one.",
                },
            },
            "required": ["path", "old_string", "new_string"],
            "additionalProperties": False,
        },
    )
    mutating: bool = True

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        shown = display_path(ctx.workspace, target)
        count = await asyncio.to_thread(_edit, target, shown, parsed)
        noun = "replacement" if count == 1 else "replacements"
        return ToolResult(ok=True, content=f"edited {shown}: {count} {noun}")


def _parse(args: dict[str, Any]) -> _Args:
    try:
        parsed = msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"edit_file: invalid arguments: {exc}") from None
    if not parsed.old_string:
        raise ToolError("edit_file: old_string must not be empty (use write_file to create a file)")
    if parsed.old_string == parsed.new_string:
        raise ToolError("edit_file: old_string and new_string are identical; nothing to change")
    return parsed


def _edit(target: Path, shown: str, args: _Args) -> int:
    """Apply the replacement and return how many occurrences were replaced."""
    text = _read_text(target, shown)
    count = text.count(args.old_string)
    if count == 0:
        raise ToolError(f"edit_file: old_string not found in {shown!r}")
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"edit_file: old_string occurs {count} times in {shown!r}; add surrounding context "
            "to make it unique, or set replace_all=true"
        )
    data = text.replace(args.old_string, args.new_string).encode("utf-8")
    if len(data) > MAX_BYTES:
        raise ToolError(f"edit_file: the result would be {len(data)} bytes; the limit is {MAX_BYTES}")
    try:
        write_bytes_no_follow(target, data)
    except OSError as exc:
        raise ToolError(f"edit_file: cannot write {shown!r}: {exc.strerror or exc}") from None
    return count


def _read_text(target: Path, shown: str) -> str:
    if not target.exists():
        raise ToolError(f"edit_file: {shown!r} does not exist")
    if not target.is_file():
        raise ToolError(f"edit_file: {shown!r} is not a regular file")
    try:
        with target.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ToolError(f"edit_file: cannot read {shown!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ToolError(f"edit_file: {shown!r} is larger than {MAX_BYTES} bytes")
    if b"\x00" in data:
        raise ToolError(f"edit_file: {shown!r} is a binary file")
    try:
        # Decoding bytes (not text mode) keeps \r\n line endings intact.
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"edit_file: {shown!r} is not UTF-8 text") from None
