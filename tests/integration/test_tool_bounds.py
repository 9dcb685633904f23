"""Every tool is bounded in time and in output, and a slow tool never stalls the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import Bash, ReadFile, Search, ToolContext, ToolResult
from app.agent.tools.search_worker import MAX_OUTPUT_CHARS

PATHOLOGICAL = [
    ("(a+)+$", "a" * 40 + "!"),
    ("(a|aa)*b", "a" * 60),
    ("(x+x+)+y", "x" * 50),
    ("^(\\w+\\s?)*$", "word " * 12 + "!"),
    ("(.*a){12}b", "a" * 60),
    ("(?:q|qq|qqq)+z", "q" * 80),
]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def ctx(ws: Path) -> ToolContext:
    return ToolContext(workspace=ws.resolve())


async def _run_with_ticks(coro: Any) -> tuple[ToolResult, float]:
    """The result and the longest gap between event-loop ticks while it ran."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            worst = max(worst, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        done.set()
        await tick
    return result, worst


@pytest.mark.parametrize(("pattern", "line"), PATHOLOGICAL)
def test_catastrophic_patterns_end_at_the_deadline_without_stalling_the_loop(
    ws: Path, ctx: ToolContext, pattern: str, line: str
) -> None:
    (ws / "victim.txt").write_text((line + "\n") * 2)
    started = time.monotonic()
    result, worst_gap = asyncio.run(_run_with_ticks(Search(timeout_s=1.5).run({"pattern": pattern}, ctx)))
    elapsed = time.monotonic() - started
    assert not result.ok and result.error_kind == "timeout", result.content
    assert "timed out after 1.5 s" in result.content
    assert elapsed < 6, elapsed
    assert worst_gap < 0.5, worst_gap


def test_many_matches_are_cut_with_a_marker(ws: Path, ctx: ToolContext) -> None:
    (ws / "many.txt").write_text(("match " + "y" * 190 + "\n") * 5000)
    result = asyncio.run(Search().run({"pattern": "match", "max_results": 10_000}, ctx))
    assert result.ok
    assert len(result.content) <= MAX_OUTPUT_CHARS + 200
    assert "[output capped at" in result.content.splitlines()[-1]


def test_a_huge_line_is_searched_and_shown_trimmed(ws: Path, ctx: ToolContext) -> None:
    (ws / "wide.txt").write_text("z" * 900_000 + "needle\n")
    result = asyncio.run(Search().run({"pattern": "needle"}, ctx))
    assert result.ok and result.content.startswith("wide.txt:1: zzz")
    assert len(result.content) < 300


def test_a_huge_file_is_skipped_visibly(ws: Path, ctx: ToolContext) -> None:
    (ws / "huge.txt").write_text("needle\n" * 400_000)
    result = asyncio.run(Search().run({"pattern": "needle"}, ctx))
    assert "file(s) over 1048576 bytes skipped" in result.content


def test_read_file_of_a_big_file_is_cut_with_a_marker(ws: Path, ctx: ToolContext) -> None:
    (ws / "big.txt").write_text("x" * 5_000_000)
    result = asyncio.run(ReadFile().run({"path": "big.txt"}, ctx))
    assert len(result.content) < 300_000
    assert "[truncated: the file is 5000000 bytes" in result.content


def test_bash_printing_50_mb_keeps_head_and_tail(ctx: ToolContext) -> None:
    command = "head -c 50000000 /dev/zero | tr '\\0' 'a'; echo; echo THE-END"
    started = time.monotonic()
    result, worst_gap = asyncio.run(_run_with_ticks(Bash().run({"command": command}, ctx)))
    assert time.monotonic() - started < 60
    assert len(result.content) < 70_000
    assert "bytes omitted" in result.content and "THE-END" in result.content
    assert worst_gap < 0.5, worst_gap


def test_bash_runs_are_bounded_in_time(ctx: ToolContext) -> None:
    started = time.monotonic()
    result = asyncio.run(Bash(max_timeout_s=1).run({"command": "sleep 30", "timeout_s": 999}, ctx))
    assert result.error_kind == "timeout" and "timed out" in result.content
    assert time.monotonic() - started < 10
