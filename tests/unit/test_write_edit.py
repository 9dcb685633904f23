"""write_file and edit_file: workspace confinement, caps and exact replacement."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import (
    EditFile,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    WriteFile,
    all_builtin_tools,
    builtin_tools,
)
from app.agent.tools.write_file import MAX_BYTES


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.txt").write_text("hello world\n")
    return root.resolve()


@pytest.fixture
def ctx(ws: Path) -> ToolContext:
    return ToolContext(workspace=ws)


def run(tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return asyncio.run(tool.run(args, ctx))


def test_all_builtin_tools_adds_the_five_new_ones() -> None:
    tools = all_builtin_tools()
    by_name = {t.schema.name: t.mutating for t in tools}
    assert by_name == {
        "read_file": False,
        "list_dir": False,
        "search": False,
        "write_file": True,
        "edit_file": True,
        "bash": True,
        "web_fetch": False,
        "kubectl": False,
    }
    assert len(ToolRegistry(tools)) == 8
    assert [t.schema.name for t in builtin_tools()] == ["read_file", "list_dir", "search"]


# --- write_file ------------------------------------------------------------


def test_write_file_is_mutating_and_named() -> None:
    assert WriteFile.schema.name == "write_file"
    assert WriteFile().mutating is True
    assert EditFile.schema.name == "edit_file"
    assert EditFile().mutating is True


def test_write_creates_file_and_parent_dirs(ws: Path, ctx: ToolContext) -> None:
    result = run(WriteFile(), {"path": "new/deep/b.txt", "content": "héllo\n"}, ctx)
    assert result.ok
    assert (ws / "new" / "deep" / "b.txt").read_text() == "héllo\n"
    assert "created new/deep/b.txt" in result.content
    assert "7 bytes written" in result.content  # é is two bytes


def test_write_overwrites_existing(ws: Path, ctx: ToolContext) -> None:
    result = run(WriteFile(), {"path": "a.txt", "content": "bye"}, ctx)
    assert result.ok
    assert "overwrote a.txt" in result.content
    assert (ws / "a.txt").read_text() == "bye"


def test_write_keeps_exact_bytes(ws: Path, ctx: ToolContext) -> None:
    run(WriteFile(), {"path": "crlf.txt", "content": "a\r\nb\r\n"}, ctx)
    assert (ws / "crlf.txt").read_bytes() == b"a\r\nb\r\n"


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/bmo-escape.txt", "sub/../../x.txt"])
def test_write_refuses_paths_outside(ws: Path, ctx: ToolContext, path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        run(WriteFile(), {"path": path, "content": "x"}, ctx)
    assert not (ws.parent / "escape.txt").exists()


def test_write_refuses_symlink_pointing_outside(ws: Path, tmp_path: Path, ctx: ToolContext) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (ws / "link.txt").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the workspace"):
        run(WriteFile(), {"path": "link.txt", "content": "pwned"}, ctx)
    assert outside.read_text() == "secret"


def test_write_refuses_symlinked_dir_pointing_outside(ws: Path, tmp_path: Path, ctx: ToolContext) -> None:
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    (ws / "d").symlink_to(outdir, target_is_directory=True)
    with pytest.raises(ToolError, match="outside the workspace"):
        run(WriteFile(), {"path": "d/new.txt", "content": "x"}, ctx)
    assert not (outdir / "new.txt").exists()


def test_write_through_symlink_inside_writes_target(ws: Path, ctx: ToolContext) -> None:
    (ws / "alias.txt").symlink_to(ws / "a.txt")
    result = run(WriteFile(), {"path": "alias.txt", "content": "via link"}, ctx)
    assert result.ok
    assert (ws / "a.txt").read_text() == "via link"
    assert (ws / "alias.txt").is_symlink()


def test_write_size_cap(ws: Path, ctx: ToolContext) -> None:
    run(WriteFile(), {"path": "exact.txt", "content": "x" * MAX_BYTES}, ctx)
    assert (ws / "exact.txt").stat().st_size == MAX_BYTES
    with pytest.raises(ToolError, match="limit"):
        run(WriteFile(), {"path": "big.txt", "content": "x" * (MAX_BYTES + 1)}, ctx)
    assert not (ws / "big.txt").exists()


def test_write_refuses_directory_and_workspace_root(ws: Path, ctx: ToolContext) -> None:
    (ws / "dir").mkdir()
    with pytest.raises(ToolError, match="is a directory"):
        run(WriteFile(), {"path": "dir", "content": "x"}, ctx)
    with pytest.raises(ToolError, match="is a directory"):
        run(WriteFile(), {"path": ".", "content": "x"}, ctx)


def test_write_refuses_fifo(ws: Path, ctx: ToolContext) -> None:
    os.mkfifo(ws / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        run(WriteFile(), {"path": "pipe", "content": "x"}, ctx)


def test_write_parent_is_a_file(ws: Path, ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="cannot write"):
        run(WriteFile(), {"path": "a.txt/child.txt", "content": "x"}, ctx)


@pytest.mark.parametrize(
    "args",
    [
        {"path": "x.txt"},
        {"content": "x"},
        {"path": "x.txt", "content": 3},
        {"path": "x", "content": "", "z": 1},
    ],
)
def test_write_invalid_args(ctx: ToolContext, args: dict[str, Any]) -> None:
    with pytest.raises(ToolError, match="invalid arguments"):
        run(WriteFile(), args, ctx)


# --- edit_file -------------------------------------------------------------


def test_edit_single_replacement(ws: Path, ctx: ToolContext) -> None:
    result = run(EditFile(), {"path": "a.txt", "old_string": "world", "new_string": "there"}, ctx)
    assert result.ok
    assert result.content == "edited a.txt: 1 replacement"
    assert (ws / "a.txt").read_text() == "hello there\n"


def test_edit_not_found(ws: Path, ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="not found"):
        run(EditFile(), {"path": "a.txt", "old_string": "nope", "new_string": "x"}, ctx)
    assert (ws / "a.txt").read_text() == "hello world\n"


def test_edit_ambiguous_without_replace_all(ws: Path, ctx: ToolContext) -> None:
    (ws / "m.txt").write_text("x = 1\nx = 1\nx = 1\n")
    with pytest.raises(ToolError, match="occurs 3 times"):
        run(EditFile(), {"path": "m.txt", "old_string": "x = 1", "new_string": "x = 2"}, ctx)
    assert (ws / "m.txt").read_text() == "x = 1\nx = 1\nx = 1\n"


def test_edit_replace_all(ws: Path, ctx: ToolContext) -> None:
    (ws / "m.txt").write_text("x = 1\nx = 1\nx = 1\n")
    args = {"path": "m.txt", "old_string": "x = 1", "new_string": "y", "replace_all": True}
    result = run(EditFile(), args, ctx)
    assert result.content == "edited m.txt: 3 replacements"
    assert (ws / "m.txt").read_text() == "y\ny\ny\n"


def test_edit_keeps_crlf_and_multiline(ws: Path, ctx: ToolContext) -> None:
    (ws / "w.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    run(EditFile(), {"path": "w.txt", "old_string": "one\r\ntwo", "new_string": "1\r\n2"}, ctx)
    assert (ws / "w.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


def test_edit_can_delete_text(ws: Path, ctx: ToolContext) -> None:
    run(EditFile(), {"path": "a.txt", "old_string": " world", "new_string": ""}, ctx)
    assert (ws / "a.txt").read_text() == "hello\n"


def test_edit_refuses_empty_or_identical(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="must not be empty"):
        run(EditFile(), {"path": "a.txt", "old_string": "", "new_string": "x"}, ctx)
    with pytest.raises(ToolError, match="identical"):
        run(EditFile(), {"path": "a.txt", "old_string": "hello", "new_string": "hello"}, ctx)


def test_edit_missing_file_and_directory(ws: Path, ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        run(EditFile(), {"path": "missing.txt", "old_string": "a", "new_string": "b"}, ctx)
    (ws / "dir").mkdir()
    with pytest.raises(ToolError, match="not a regular file"):
        run(EditFile(), {"path": "dir", "old_string": "a", "new_string": "b"}, ctx)


def test_edit_refuses_binary_and_non_utf8(ws: Path, ctx: ToolContext) -> None:
    (ws / "bin").write_bytes(b"a\x00b")
    with pytest.raises(ToolError, match="binary"):
        run(EditFile(), {"path": "bin", "old_string": "a", "new_string": "b"}, ctx)
    (ws / "latin1").write_bytes("café".encode("latin-1"))
    with pytest.raises(ToolError, match="not UTF-8"):
        run(EditFile(), {"path": "latin1", "old_string": "caf", "new_string": "b"}, ctx)


def test_edit_refuses_symlink_pointing_outside(ws: Path, tmp_path: Path, ctx: ToolContext) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (ws / "link.txt").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the workspace"):
        run(EditFile(), {"path": "link.txt", "old_string": "secret", "new_string": "x"}, ctx)
    assert outside.read_text() == "secret"


def test_edit_result_size_cap(ws: Path, ctx: ToolContext) -> None:
    (ws / "big.txt").write_text("ab" * (MAX_BYTES // 4))
    args = {"path": "big.txt", "old_string": "a", "new_string": "aaaa", "replace_all": True}
    with pytest.raises(ToolError, match="limit"):
        run(EditFile(), args, ctx)
    assert (ws / "big.txt").read_text() == "ab" * (MAX_BYTES // 4)
