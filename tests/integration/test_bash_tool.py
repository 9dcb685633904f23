"""The bash tool with real processes: timeouts, cancellation, caps, exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import Bash, ToolContext, ToolError, ToolResult
from app.agent.tools.bash import KILL_GRACE_S, CappedOutput

EXIT_LINE = re.compile(r"^exit code (\d+)$", re.MULTILINE)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def ctx(ws: Path) -> ToolContext:
    return ToolContext(workspace=ws)


def run(args: dict[str, Any], ctx: ToolContext, tool: Bash | None = None) -> ToolResult:
    return asyncio.run((tool or Bash()).run(args, ctx))


def exit_code(result: ToolResult) -> int:
    found = EXIT_LINE.findall(result.content)
    assert len(found) == 1, result.content
    return int(found[0])


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone.

    Orphans are re-parented to PID 1, which in a container may never reap them.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], limit: float = 10.0) -> list[int]:
    """The pids still alive after up to `limit` seconds."""
    deadline = time.monotonic() + limit
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_schema_and_flags() -> None:
    assert Bash.schema.name == "bash"
    assert Bash().mutating is True
    assert Bash.schema.parameters["required"] == ["command"]


def test_success_output_and_exit_code(ctx: ToolContext) -> None:
    result = run({"command": "echo hello"}, ctx)
    assert result.ok
    assert result.error_kind is None
    assert result.content.splitlines() == ["hello", "exit code 0"]


def test_nonzero_exit_keeps_merged_output(ctx: ToolContext) -> None:
    result = run({"command": "echo out; echo err >&2; exit 3"}, ctx)
    assert not result.ok
    assert result.error_kind is None
    assert "out\nerr" in result.content
    assert exit_code(result) == 3


def test_no_output(ctx: ToolContext) -> None:
    result = run({"command": "true"}, ctx)
    assert result.content == "(no output)\nexit code 0"


def test_cwd_is_the_workspace(ws: Path, ctx: ToolContext) -> None:
    result = run({"command": "pwd; touch made-here"}, ctx)
    assert result.content.splitlines()[0] == str(ws)
    assert (ws / "made-here").exists()


def test_stdin_is_empty(ctx: ToolContext) -> None:
    started = time.monotonic()
    result = run({"command": "cat; echo done"}, ctx, Bash(default_timeout_s=5))
    assert result.ok and "done" in result.content
    assert time.monotonic() - started < 2


def test_killed_by_signal_reports_shell_code(ctx: ToolContext) -> None:
    result = run({"command": "echo before; kill -9 $$"}, ctx)
    assert not result.ok
    assert "before" in result.content
    assert "terminated by signal SIGKILL" in result.content
    assert exit_code(result) == 137


def test_timeout_kills_the_whole_group(ws: Path, ctx: ToolContext) -> None:
    command = "sleep 60 & echo $! > pids; echo $$ >> pids; echo started; sleep 60"
    started = time.monotonic()
    result = run({"command": command, "timeout_s": 0.5}, ctx)
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.error_kind == "timeout"
    assert "killed after 0.5 s" in result.content
    assert "started" in result.content  # the output so far
    assert exit_code(result) == 143  # SIGTERM was enough
    assert elapsed < 0.5 + KILL_GRACE_S
    pids = read_pids(ws / "pids")
    assert len(pids) == 2
    assert wait_gone(pids) == []


def test_timeout_escalates_to_sigkill(ws: Path, ctx: ToolContext) -> None:
    # The ignored SIGTERM is inherited by the children too.
    command = "trap '' TERM; sleep 60 & echo $! > pids; while :; do sleep 0.05; done"
    started = time.monotonic()
    result = run({"command": command, "timeout_s": 0.3}, ctx)
    elapsed = time.monotonic() - started
    assert result.error_kind == "timeout"
    assert exit_code(result) == 137
    assert 0.3 + KILL_GRACE_S - 0.1 <= elapsed < 0.3 + KILL_GRACE_S + 2
    assert wait_gone(read_pids(ws / "pids")) == []


def test_timeout_is_clamped_and_defaulted(ctx: ToolContext) -> None:
    clamped = run({"command": "sleep 30", "timeout_s": 1000}, ctx, Bash(max_timeout_s=0.2))
    assert clamped.error_kind == "timeout"
    assert "killed after 0.2 s" in clamped.content
    defaulted = run({"command": "sleep 30"}, ctx, Bash(default_timeout_s=0.2))
    assert "killed after 0.2 s" in defaulted.content


CHILDREN = "sleep 60 & echo $! >> pids; sleep 60 & echo $! >> pids; echo $$ >> pids; wait"
StartWait = Callable[[asyncio.Task[ToolResult], Path], Awaitable[None]]


def cancel_with_children(ws: Path, ctx: ToolContext, wait_for_start: StartWait) -> list[int]:
    """Run CHILDREN, cancel the call once `wait_for_start` returns; the pids it had written."""

    async def scenario() -> list[int]:
        task = asyncio.create_task(Bash().run({"command": CHILDREN}, ctx))
        await wait_for_start(task, ws / "pids")
        pids = read_pids(ws / "pids")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    pids = asyncio.run(scenario())
    assert len(pids) == 3
    return pids


def test_cancel_kills_children(ws: Path, ctx: ToolContext) -> None:
    async def started(task: asyncio.Task[ToolResult], pids_file: Path) -> None:
        deadline = time.monotonic() + 30  # a loaded machine spawns slowly
        while len(read_pids(pids_file)) < 3:
            assert time.monotonic() < deadline, "command did not start"
            await asyncio.sleep(0.02)
        assert all(alive(p) for p in read_pids(pids_file))

    assert wait_gone(cancel_with_children(ws, ctx, started)) == []


@pytest.mark.parametrize("turns", [1, 2, 3, 5, 8])
def test_a_cancel_at_any_step_of_the_start_kills_every_child(ws: Path, ctx: ToolContext, turns: int) -> None:
    """The shell may run, and start children, before asyncio has connected its pipes: a cancel
    landing then must kill the whole group, not only the shell (asyncio's own clean-up)."""

    async def held_after(task: asyncio.Task[ToolResult], pids_file: Path) -> None:
        deadline = time.monotonic() + 30
        for _ in range(turns):  # let the start proceed this many loop turns
            await asyncio.sleep(0)
        # then hold the loop (the set-up cannot advance) until the command has its children
        while len(read_pids(pids_file)) < 3 and not task.done():
            assert time.monotonic() < deadline, "command did not start"
            time.sleep(0.01)
            if len(read_pids(pids_file)) < 3:
                await asyncio.sleep(0)

    assert wait_gone(cancel_with_children(ws, ctx, held_after)) == []


def test_background_processes_do_not_outlive_the_command(ctx: ToolContext) -> None:
    started = time.monotonic()
    result = run({"command": "sleep 60 & echo $!"}, ctx)
    assert result.ok
    assert time.monotonic() - started < KILL_GRACE_S
    pid = int(result.content.splitlines()[0])
    assert wait_gone([pid]) == []


def test_output_cap_keeps_head_and_tail(ctx: ToolContext) -> None:
    result = run({"command": "seq 1 20000"}, ctx, Bash(output_cap=1000))
    total = len("".join(f"{n}\n" for n in range(1, 20001)))
    assert result.ok
    assert result.content.startswith("1\n2\n3\n")
    assert f"[... {total - 1000} bytes omitted ...]" in result.content
    assert result.content.endswith("19999\n20000\nexit code 0")
    assert len(result.content) < 1200


def test_capped_output_does_not_split_utf8_at_the_tail() -> None:
    out = CappedOutput(8)
    out.feed("ééééééééé".encode())  # 18 bytes
    text = out.text()
    assert "\ufffd" not in text.split("omitted ...]\n", 1)[1]


@pytest.mark.parametrize(
    "args", [{}, {"command": "  "}, {"command": "true", "timeout_s": 0}, {"command": "a\x00b"}]
)
def test_invalid_args(ctx: ToolContext, args: dict[str, Any]) -> None:
    with pytest.raises(ToolError):
        run(args, ctx)
