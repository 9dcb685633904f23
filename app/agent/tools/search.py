"""`search`: a Python regex over the text files of the workspace.

The matching runs in a child process (`search_worker.py`) killed at a deadline:
a backtracking pattern costs the caller a timeout error, never a stalled server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from app.agent.tools import search_worker
from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.bash import CappedOutput, drain_into, kill_group, reap, spawn_guarded
from app.agent.tools.environment import tool_environment
from app.agent.tools.process_guard import GroupRecords
from app.agent.tools.workspace import display_path, resolve_in_workspace
from app.providers.base import ToolSchema

__all__ = ["MAX_FILE_BYTES", "MAX_LINE_CHARS", "MAX_PATTERN_CHARS", "SKIP_DIRS", "Search"]

SKIP_DIRS = search_worker.SKIP_DIRS
MAX_FILE_BYTES = search_worker.MAX_FILE_BYTES
MAX_LINE_CHARS = search_worker.MAX_LINE_CHARS
MAX_PATTERN_CHARS = 4096
_ANSWER_CAP = 4 * search_worker.MAX_OUTPUT_CHARS  # JSON escaping can grow the text


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

    def __init__(
        self,
        timeout_s: float = 10.0,
        *,
        env: Mapping[str, str] | None = None,
        records: GroupRecords | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._env = env
        self._records = records

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        target = resolve_in_workspace(ctx.workspace, parsed.path)
        if not target.exists():
            raise ToolError(f"search: {display_path(ctx.workspace, target)!r} does not exist")
        request = {
            "root": str(ctx.workspace.resolve()),
            "target": str(target),
            "pattern": parsed.pattern,
            "limit": parsed.max_results,
        }
        answer = await self._in_child(json.dumps(request))
        if answer is None:
            return ToolResult(
                ok=False,
                content=(
                    f"error: search: timed out after {self._timeout_s:g} s and was stopped. The pattern "
                    "may backtrack catastrophically (nested quantifiers such as (a+)+ or (a|aa)*); "
                    "simplify it or search a narrower path."
                ),
                error_kind="timeout",
            )
        if not answer["ok"]:
            raise ToolError(answer["content"])
        return ToolResult(ok=True, content=answer["content"])

    async def _in_child(self, request: str) -> dict[str, Any] | None:
        """The worker's answer, or None when it ran past the deadline (it is killed)."""
        env = self._env if self._env is not None else tool_environment(os.environ)
        argv = [sys.executable, "-I", "-S", search_worker.__file__, request]
        guarded = await spawn_guarded(argv, env=env, records=self._records)
        proc = guarded.proc
        out, err = CappedOutput(_ANSWER_CAP), CappedOutput(4096)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.gather(drain_into(proc.stdout, out), drain_into(proc.stderr, err))
                await proc.wait()
        except TimeoutError:
            return None
        finally:
            kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await reap(proc)
            guarded.close()
        try:
            answer = json.loads(out.text())
        except ValueError:
            raise ToolError(f"search: the search process failed: {err.text().strip()[-500:]}") from None
        return answer  # type: ignore[no-any-return]


def _parse(args: dict[str, Any]) -> _Args:
    try:
        parsed = msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"search: invalid arguments: {exc}") from None
    if not parsed.pattern:
        raise ToolError("search: pattern must not be empty")
    if len(parsed.pattern) > MAX_PATTERN_CHARS:
        raise ToolError(
            f"search: pattern is {len(parsed.pattern)} characters; the limit is {MAX_PATTERN_CHARS}"
        )
    return parsed
