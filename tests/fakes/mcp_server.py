"""A real MCP server for tests: stdio by default, streamable HTTP with ``--http PORT``.

Run from the project root: ``python -m tests.fakes.mcp_server [--http PORT | --sse PORT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)


def build() -> MCPServer:
    server = MCPServer("bmo-fake", log_level="WARNING")

    @server.tool(description="Echo the text back.", annotations=READ_ONLY)
    def echo(text: str) -> str:
        return text

    @server.tool(description="Add two integers.", annotations=READ_ONLY)
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Pretend to write a note (a mutating tool).")
    def write_note(text: str) -> str:
        return f"noted: {text}"

    @server.tool(description="Kill the server process mid-call.")
    def crash() -> str:
        os._exit(1)

    @server.tool(description="Sleep, then answer.", annotations=READ_ONLY)
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Always fails.", annotations=READ_ONLY)
    def boom() -> str:
        raise ValueError("boom")

    @server.tool(description="Report the server's process id.", annotations=READ_ONLY)
    def pid() -> int:
        return os.getpid()

    @server.tool(description="This process's environment and its parent's, as text.", annotations=READ_ONLY)
    def environ() -> str:
        own = "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items()))
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as fh:
                parent = fh.read().replace(b"\0", b"\n").decode(errors="replace")
        except OSError as exc:
            parent = f"(unreadable: {exc})"
        return f"{own}\n--- parent ---\n{parent}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP at /mcp")
    group.add_argument("--sse", type=int, metavar="PORT", help="serve SSE at /sse")
    opts = parser.parse_args()
    server = build()
    if opts.http is not None:
        server.run("streamable-http", host="127.0.0.1", port=opts.http)
    elif opts.sse is not None:
        server.run("sse", host="127.0.0.1", port=opts.sse)
    else:
        server.run()


if __name__ == "__main__":
    main()
