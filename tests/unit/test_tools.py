"""The read-only built-in tools and the registry that runs them."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import (
    ListDir,
    ReadFile,
    Search,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    builtin_tools,
)
from app.agent.tools.list_dir import MAX_ENTRIES
from app.agent.tools.read_file import MAX_BYTES
from app.agent.tools.search import MAX_FILE_BYTES, MAX_LINE_CHARS
from app.providers.base import ToolCall


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("TODO in git\n")
    (root / "README.md").write_text("# Title\nTODO: write docs\n")
    (root / "src" / "main.py").write_text("def main():\n    return 1  # TODO\n")
    (root / "src" / "pkg" / "util.py").write_text("def helper():\n    pass\n")
    return root.resolve()


@pytest.fixture
def ctx(ws: Path) -> ToolContext:
    return ToolContext(workspace=ws)


def run(tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return asyncio.run(tool.run(args, ctx))


def test_builtin_tools_are_read_only_and_named() -> None:
    tools = builtin_tools()
    assert sorted(t.schema.name for t in tools) == ["list_dir", "read_file", "search"]
    assert not any(t.mutating for t in tools)
    for tool in tools:
        assert tool.schema.parameters["type"] == "object"


# --- list_dir ------------------------------------------------------------


def test_list_dir_sorted_with_dir_slash_and_hides_git(ctx: ToolContext) -> None:
    result = run(ListDir(), {}, ctx)
    assert result.ok
    assert result.content.splitlines() == ["README.md", "docs/", "src/"]


def test_list_dir_subdirectory(ctx: ToolContext) -> None:
    assert run(ListDir(), {"path": "src"}, ctx).content.splitlines() == ["main.py", "pkg/"]


def test_list_dir_empty(ctx: ToolContext) -> None:
    assert "empty" in run(ListDir(), {"path": "docs"}, ctx).content


def test_list_dir_caps_entries(ctx: ToolContext, ws: Path) -> None:
    big = ws / "big"
    big.mkdir()
    for i in range(MAX_ENTRIES + 7):
        (big / f"f{i:04d}").touch()
    lines = run(ListDir(), {"path": "big"}, ctx).content.splitlines()
    assert len(lines) == MAX_ENTRIES + 1
    assert "7 more entries omitted" in lines[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "nope"}, "does not exist"),
        ({"path": "README.md"}, "not a directory"),
        ({"path": 3}, "invalid arguments"),
        ({"path": ".", "bogus": 1}, "invalid arguments"),
        ({"path": "../"}, "outside the workspace"),
        ({"path": "/etc"}, "outside the workspace"),
        ({"path": "a\x00b"}, "NUL"),
    ],
)
def test_list_dir_errors(ctx: ToolContext, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        run(ListDir(), args, ctx)


# --- read_file -----------------------------------------------------------


def test_read_file_returns_text(ctx: ToolContext) -> None:
    result = run(ReadFile(), {"path": "src/main.py"}, ctx)
    assert result == ToolResult(ok=True, content="def main():\n    return 1  # TODO\n")


def test_read_file_offset_and_limit_say_truncated(ctx: ToolContext, ws: Path) -> None:
    (ws / "lines.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    content = run(ReadFile(), {"path": "lines.txt", "offset": 2, "limit": 3}, ctx).content
    assert content.startswith("line 2\nline 3\nline 4\n")
    assert "[truncated: showing lines 3-5 of 10; use offset=5 to read more]" in content


def test_read_file_default_limit_is_400_lines(ctx: ToolContext, ws: Path) -> None:
    (ws / "long.txt").write_text("x\n" * 1000)
    content = run(ReadFile(), {"path": "long.txt"}, ctx).content
    assert content.count("x\n") == 400
    assert "of 1000" in content


def test_read_file_byte_cap(ctx: ToolContext, ws: Path) -> None:
    (ws / "huge.txt").write_text("é" * MAX_BYTES)  # two bytes each: twice the cap
    content = run(ReadFile(), {"path": "huge.txt"}, ctx).content
    assert f"only the first {MAX_BYTES} bytes were read" in content
    assert content.count("é") == MAX_BYTES // 2


def test_read_file_offset_past_end(ctx: ToolContext) -> None:
    assert "past the end" in run(ReadFile(), {"path": "README.md", "offset": 50}, ctx).content


def test_read_file_accepts_numeric_strings(ctx: ToolContext) -> None:
    result = run(ReadFile(), {"path": "README.md", "offset": "1", "limit": "1"}, ctx)
    assert result.content.startswith("TODO: write docs\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "invalid arguments"),
        ({"path": "README.md", "limit": 0}, "invalid arguments"),
        ({"path": "README.md", "offset": -1}, "invalid arguments"),
        ({"path": "missing.txt"}, "does not exist"),
        ({"path": "src"}, "is a directory"),
        ({"path": "../x"}, "outside the workspace"),
        ({"path": "/etc/passwd"}, "outside the workspace"),
        ({"path": "README.md\x00"}, "NUL"),
    ],
)
def test_read_file_errors(ctx: ToolContext, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        run(ReadFile(), args, ctx)


def test_read_file_binary_is_refused(ctx: ToolContext, ws: Path) -> None:
    (ws / "img.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    with pytest.raises(ToolError, match="binary"):
        run(ReadFile(), {"path": "img.bin"}, ctx)


def test_read_file_non_utf8_is_refused(ctx: ToolContext, ws: Path) -> None:
    (ws / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ToolError, match="not UTF-8"):
        run(ReadFile(), {"path": "latin.txt"}, ctx)


def test_read_file_symlink_out_is_refused(ctx: ToolContext, ws: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", ws / "leak.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        run(ReadFile(), {"path": "leak.txt"}, ctx)


# --- search --------------------------------------------------------------


def test_search_finds_lines_and_skips_git(ctx: ToolContext) -> None:
    content = run(Search(), {"pattern": "TODO"}, ctx).content
    assert content.splitlines() == [
        "README.md:2: TODO: write docs",
        "src/main.py:2:     return 1  # TODO",
    ]


def test_search_under_path_and_regex(ctx: ToolContext) -> None:
    content = run(Search(), {"pattern": r"def \w+\(", "path": "src/pkg"}, ctx).content
    assert content == "src/pkg/util.py:1: def helper():"


def test_search_no_matches(ctx: ToolContext) -> None:
    result = run(Search(), {"pattern": "nothing-here"}, ctx)
    assert result.ok
    assert result.content.startswith("no matches")


def test_search_skips_noise_dirs_binary_and_big_files(ctx: ToolContext, ws: Path) -> None:
    for skipped in ("node_modules", "__pycache__", ".venv"):
        (ws / skipped).mkdir()
        (ws / skipped / "x.txt").write_text("needle\n")
    (ws / "blob.bin").write_bytes(b"needle\x00\x00")
    (ws / "big.txt").write_text("needle\n" + "x" * MAX_FILE_BYTES)
    (ws / "ok.txt").write_text("needle\n")
    content = run(Search(), {"pattern": "needle"}, ctx).content
    assert content == f"ok.txt:1: needle\n[1 file(s) over {MAX_FILE_BYTES} bytes skipped]"


def test_search_trims_long_lines(ctx: ToolContext, ws: Path) -> None:
    (ws / "wide.txt").write_text("needle" + "y" * 1000 + "\n")
    line = run(Search(), {"pattern": "needle", "path": "wide.txt"}, ctx).content
    assert line == "wide.txt:1: " + ("needle" + "y" * 1000)[:MAX_LINE_CHARS]


def test_search_caps_results(ctx: ToolContext, ws: Path) -> None:
    (ws / "many.txt").write_text("hit\n" * 20)
    lines = run(Search(), {"pattern": "hit", "max_results": 5}, ctx).content.splitlines()
    assert len(lines) == 6
    assert "capped at 5" in lines[-1]


def test_search_ignores_symlink_pointing_outside(ctx: ToolContext, ws: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("needle\n")
    os.symlink(tmp_path / "secret.txt", ws / "leak.txt")
    assert run(Search(), {"pattern": "needle"}, ctx).content.startswith("no matches")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"pattern": "("}, "invalid regex"),
        ({"pattern": ""}, "must not be empty"),
        ({}, "invalid arguments"),
        ({"pattern": "x", "max_results": 0}, "invalid arguments"),
        ({"pattern": "x", "path": "../"}, "outside the workspace"),
        ({"pattern": "x", "path": "/etc"}, "outside the workspace"),
        ({"pattern": "x", "path": "src\x00"}, "NUL"),
        ({"pattern": "x", "path": "missing"}, "does not exist"),
    ],
)
def test_search_errors(ctx: ToolContext, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        run(Search(), args, ctx)


# --- registry ------------------------------------------------------------


def execute(registry: ToolRegistry, call: ToolCall, ctx: ToolContext) -> ToolResult:
    return asyncio.run(registry.execute(call, ctx))


def test_registry_lookup_and_schemas() -> None:
    registry = ToolRegistry(builtin_tools())
    assert registry.names() == ("read_file", "list_dir", "search")
    assert [s.name for s in registry.schemas()] == list(registry.names())
    assert isinstance(registry.get("search"), Search)
    assert registry.get("bash") is None


def test_registry_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ToolRegistry([ListDir(), ListDir()])


def test_registry_executes_a_call(ctx: ToolContext) -> None:
    call = ToolCall("c1", "read_file", json.dumps({"path": "README.md"}))
    result = execute(ToolRegistry(builtin_tools()), call, ctx)
    assert result == ToolResult(ok=True, content="# Title\nTODO: write docs\n")


def test_registry_empty_arguments_mean_defaults(ctx: ToolContext) -> None:
    result = execute(ToolRegistry(builtin_tools()), ToolCall("c1", "list_dir", ""), ctx)
    assert result.ok


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (ToolCall("c1", "nope", "{}"), "error: unknown tool 'nope'"),
        (ToolCall("c1", "read_file", "{not json"), "error: arguments are not valid JSON"),
        (ToolCall("c1", "read_file", "[1]"), "error: arguments must be a JSON object"),
        (ToolCall("c1", "read_file", '{"path": "../x"}'), "error: path '../x' is outside"),
        (ToolCall("c1", "search", '{"pattern": "["}'), "error: search: invalid regex"),
    ],
)
def test_registry_turns_failures_into_error_results(ctx: ToolContext, call: ToolCall, message: str) -> None:
    result = execute(ToolRegistry(builtin_tools()), call, ctx)
    assert not result.ok
    assert result.content.startswith(message)


def test_registry_contains_unexpected_crashes(ctx: ToolContext) -> None:
    class Broken(ListDir):
        async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
            raise RuntimeError("boom")

    result = execute(ToolRegistry([Broken()]), ToolCall("c1", "list_dir", "{}"), ctx)
    assert not result.ok
    assert "RuntimeError: boom" in result.content
