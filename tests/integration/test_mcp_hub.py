"""McpHub against the real fake MCP server (tests/fakes/mcp_server.py) in subprocesses."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from app.agent.mcp import McpHub
from app.agent.tools.base import Tool, ToolContext, ToolResult
from app.config import McpServer

ROOT = Path(__file__).resolve().parents[2]
FAKE = ("-m", "tests.fakes.mcp_server")


def stdio(timeout: float = 20.0, **kw: Any) -> McpServer:
    env = {"PYTHONPATH": str(ROOT)}
    return McpServer(type="stdio", command=sys.executable, args=FAKE, env=env, timeout=timeout, **kw)


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "mcp-stderr.log", "w") as f:
        yield f


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.schema.name: tool for tool in tools}


async def call(tools: list[Tool], name: str, **args: Any) -> ToolResult:
    return await by_name(tools)[name].run(args, ToolContext(workspace=ROOT))


async def server_pid(tools: list[Tool], sid: str) -> int:
    result = await call(tools, f"mcp__{sid}__pid")
    assert result.ok, result
    return int(result.content)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_tools_listed_named_and_flagged(errlog: TextIO) -> None:
    async def main() -> None:
        hub = McpHub(
            {"fs": stdio(disabled_tools=("crash", "mcp__fs__boom")), "off": stdio(enabled=False)},
            errlog=errlog,
        )
        await hub.start()
        try:
            assert hub.status() == {"fs": "ready", "off": "disabled"}
            tools = by_name(hub.tools())
            names = ("echo", "add", "write_note", "slow", "pid", "environ")
            assert set(tools) == {f"mcp__fs__{n}" for n in names}
            assert {n: t.mutating for n, t in tools.items()} == {
                "mcp__fs__echo": False,
                "mcp__fs__add": False,
                "mcp__fs__write_note": True,
                "mcp__fs__slow": False,
                "mcp__fs__pid": False,
                "mcp__fs__environ": False,
            }
            schema = tools["mcp__fs__add"].schema
            assert schema.description == "Add two integers."
            assert schema.parameters["properties"].keys() == {"a", "b"}  # type: ignore[attr-defined]
        finally:
            await hub.aclose()

    asyncio.run(main())


def test_names_are_sanitized_and_capped(errlog: TextIO) -> None:
    async def main() -> None:
        sid = "my.server-" + "x" * 70
        hub = McpHub({sid: stdio()}, errlog=errlog)
        await hub.start()
        try:
            names = [tool.schema.name for tool in hub.tools()]
            assert len(names) == len(set(names)) == 8
            for name in names:
                assert len(name) <= 64 and name.startswith("mcp__my_server-x")
                assert all(c.isalnum() or c in "_-" for c in name)
        finally:
            await hub.aclose()

    asyncio.run(main())


def test_calls_return_text_and_tool_errors(errlog: TextIO) -> None:
    async def main() -> None:
        hub = McpHub({"fs": stdio()}, errlog=errlog)
        await hub.start()
        try:
            tools = hub.tools()
            assert await call(tools, "mcp__fs__echo", text="héllo") == ToolResult(ok=True, content="héllo")
            assert await call(tools, "mcp__fs__add", a=2, b=40) == ToolResult(ok=True, content="42")
            assert (await call(tools, "mcp__fs__write_note", text="x")).content == "noted: x"
            failed = await call(tools, "mcp__fs__boom")
            assert not failed.ok and failed.content.startswith("error: ") and failed.error_kind is None
            bad_args = await call(tools, "mcp__fs__add", a="two")
            assert not bad_args.ok and bad_args.error_kind is None
            assert hub.status()["fs"] == "ready"  # tool errors do not hurt the server
        finally:
            await hub.aclose()

    asyncio.run(main())


def test_crash_is_unavailable_fast_and_reconnects_once(errlog: TextIO) -> None:
    async def main() -> None:
        hub = McpHub({"fs": stdio(timeout=10)}, errlog=errlog)
        await hub.start()
        try:
            tools = hub.tools()
            first_pid = await server_pid(tools, "fs")

            started = time.monotonic()
            crashed = await call(tools, "mcp__fs__crash")
            assert time.monotonic() - started < 3
            assert crashed.ok is False and crashed.error_kind == "unavailable"
            assert crashed.content.startswith("error: MCP server 'fs' is unavailable: ")
            assert hub.status()["fs"].startswith("dead: ")

            # the one reconnect: a fresh process
            second_pid = await server_pid(tools, "fs")
            assert second_pid != first_pid and hub.status()["fs"] == "ready"

            assert (await call(tools, "mcp__fs__crash")).error_kind == "unavailable"
            for _ in range(3):  # no restarts left: every later call fails at once
                started = time.monotonic()
                again = await call(tools, "mcp__fs__echo", text="hi")
                assert time.monotonic() - started < 0.5
                assert again.error_kind == "unavailable" and "'fs'" in again.content
            assert hub.status()["fs"].startswith("dead: ")
            assert hub.tools() == []  # nothing left worth offering
        finally:
            await hub.aclose()
        assert not alive(first_pid) and not alive(second_pid)

    asyncio.run(main())


def test_slow_call_times_out_fast(errlog: TextIO) -> None:
    # the fake needs about 1 s to start and `timeout` bounds the start too, hence 3 s, not 1 s
    async def main() -> None:
        hub = McpHub({"fs": stdio(timeout=3)}, errlog=errlog)
        await hub.start()
        try:
            tools = hub.tools()
            pid = await server_pid(tools, "fs")
            started = time.monotonic()
            result = await call(tools, "mcp__fs__slow", seconds=10)
            assert time.monotonic() - started < 4.5
            assert result.error_kind == "unavailable" and "within 3s" in result.content
            assert hub.status()["fs"].startswith("dead: ")
            for _ in range(100):  # the stuck process is torn down in the background
                if not alive(pid):
                    break
                await asyncio.sleep(0.05)
            assert not alive(pid)
        finally:
            await hub.aclose()

    asyncio.run(main())


def test_missing_command_fails_without_raising(errlog: TextIO) -> None:
    async def main() -> None:
        servers = {
            "gone": McpServer(type="stdio", command="/nonexistent/bmo-no-such-server", timeout=5),
            "fs": stdio(),
        }
        hub = McpHub(servers, errlog=errlog)
        started = time.monotonic()
        await hub.start()
        assert time.monotonic() - started < 15
        try:
            status = hub.status()
            assert status["fs"] == "ready"
            assert status["gone"].startswith("failed: ") and "bmo-no-such-server" in status["gone"]
            assert all(t.schema.name.startswith("mcp__fs__") for t in hub.tools())
        finally:
            await hub.aclose()

    asyncio.run(main())


def test_start_timeout_kills_a_server_that_never_answers(errlog: TextIO, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    async def main() -> None:
        hub = McpHub(
            {"mute": McpServer(type="stdio", command=sys.executable, args=("-c", script), timeout=1)}
        )
        started = time.monotonic()
        await hub.start()
        assert time.monotonic() - started < 2  # the stuck process is stopped in the background
        assert hub.status()["mute"] == "failed: timed out"
        assert hub.tools() == []
        pid = int(pid_file.read_text())
        await hub.aclose()
        assert not alive(pid)

    asyncio.run(main())


def test_aclose_terminates_subprocesses(errlog: TextIO) -> None:
    async def main() -> None:
        hub = McpHub({"a": stdio(), "b": stdio()}, errlog=errlog)
        await hub.start()
        tools = hub.tools()
        pids = [await server_pid(tools, "a"), await server_pid(tools, "b")]
        assert all(alive(pid) for pid in pids)
        await hub.aclose()
        assert not any(alive(pid) for pid in pids)
        after = await call(tools, "mcp__a__echo", text="x")
        assert after.error_kind == "unavailable"

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["http", "sse"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[McpServer]:
    kind: str = request.param
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, *FAKE, f"--{kind}", str(port)], cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.05)
        path = "/mcp" if kind == "http" else "/sse"
        yield McpServer(type=kind, url=f"http://127.0.0.1:{port}{path}", headers={"X-Test": "1"}, timeout=5)  # type: ignore[arg-type]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_remote_transports(remote: McpServer) -> None:
    async def main() -> None:
        hub = McpHub({"web": remote})
        await hub.start()
        try:
            assert hub.status() == {"web": "ready"}
            tools = hub.tools()
            assert await call(tools, "mcp__web__add", a=1, b=2) == ToolResult(ok=True, content="3")
            assert (await call(tools, "mcp__web__echo", text="over http")).content == "over http"
            started = time.monotonic()
            slow = await call(tools, "mcp__web__slow", seconds=10)
            assert slow.error_kind == "unavailable" and time.monotonic() - started < 7
        finally:
            await hub.aclose()

    asyncio.run(main())
