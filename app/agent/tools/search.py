"""`search`: a Python regex over the text files of the workspace."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.providers.base import ToolSchema

__all__ = ["MAX_FILE_BYTES", "MAX_LINE_CHARS", "SKIP_DIRS", "Search"]

SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv"})
MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_CHARS = 200
_SNIFF_BYTES = 8192


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    pattern: str
    path: str = "."
    max_results: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class Search:
    schema = ToolSchema(
        name="search",
        description=(
            "Search text files in the workspace with a Python regular expression. "
            "Returns lines as 'path:lineno: line'. Skips .git, node_modules, "
            "__pycache__, .venv, binary files and files over 1 MiB."
        ),
        parameters={
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "Python regular expression."},
                "path": {
                    "type": "string",
                    "description": "File or directory to search, relative to the workspace.",
                    "default": ".",
                },
                "max_results": {"type": "integer", "minimum": 1, "default": 100},
            },
            "required": ["pattern"],
            "additionalProperties": False,
        },
    )
    mutating: bool = False

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        regex = _compile(parsed.pattern)
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        if not target.exists():
            raise ToolError(f"search: {display_path(ctx.workspace, target)!r} does not exist")
        content = await asyncio.to_thread(_search, ctx.workspace.resolve(), target, regex, parsed.max_results)
        return ToolResult(ok=True, content=content)


def _parse(args: dict[str, Any]) -> _Args:
    try:
        parsed = msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"search: invalid arguments: {exc}") from None
    if not parsed.pattern:
        raise ToolError("search: pattern must not be empty")
    return parsed


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ToolError(f"search: invalid regex {pattern!r}: {exc}") from None


def _search(root: Path, target: Path, regex: re.Pattern[str], limit: int) -> str:
    lines: list[str] = []
    for file in _candidate_files(root, target):
        for lineno, line in _matching_lines(file, regex):
            if len(lines) == limit:
                lines.append(f"[results capped at {limit}; narrow the pattern or path]")
                return "\n".join(lines)
            lines.append(f"{display_path(root, file)}:{lineno}: {line[:MAX_LINE_CHARS]}")
    if not lines:
        return f"no matches for {regex.pattern!r}"
    return "\n".join(lines)


def _candidate_files(root: Path, target: Path) -> Iterator[Path]:
    if target.is_file():
        yield target
        return
    # Sorted walk so results are stable; linked directories are not followed.
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() and not _link_stays_inside(path, root):
                continue  # a link pointing out of the workspace, or a loop
            yield path


def _link_stays_inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve(strict=False).is_relative_to(root)
    except (RuntimeError, OSError):  # a symlink loop resolves to nothing
        return False


def _matching_lines(file: Path, regex: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    text = _read_searchable(file)
    if text is None:
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if regex.search(line):
            yield lineno, line


def _read_searchable(file: Path) -> str | None:
    """The file's text, or None for binary, oversized or unreadable files."""
    try:
        if not file.is_file() or file.stat().st_size > MAX_FILE_BYTES:
            return None
        data = file.read_bytes()
    except OSError:
        return None
    if b"\x00" in data[:_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")
