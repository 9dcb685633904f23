"""A tiny, fast OpenAI-protocol upstream that streams *slowly*, in a process of its own.

Used by the reliability suite to keep hundreds of bmo streams open at once. Each
`POST /v1/chat/completions` reads its instructions from a directive in the last
user message that carries one::

    <<stream nonce=abc chunks=12 delay_ms=500>>            # 12 pieces, 0.5 s apart
    <<stream nonce=abc chunks=12 delay_ms=50 reset_after=3>>   # TCP RST after 3 pieces
    <<stream nonce=abc chunks=12 delay_ms=50 stall_after=3 stall_ms=5000>>  # silent 5 s
    <<stream nonce=abc chunks=12 delay_ms=50 malformed_after=3>>  # `data: {not json`
    <<stream nonce=abc head_ms=5000>>                      # no response head for 5 s

and streams `expected_content(nonce, chunks)` in `chunks` deltas (so a client can
check that it received exactly the full content), then the finish chunk, usage and
`data: [DONE]`. A message without a directive gets one short piece. It never keeps a
script, so any number of concurrent requests can share it.

Run it with `python -m tests.reliability.slow_stream_upstream --port P`, or use
`SlowStreamUpstream` (a context manager that starts and always stops the process).
`GET /stats` reports requests seen and streams open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SlowStreamUpstream", "directive", "expected_content"]

DIRECTIVE = re.compile(r"<<stream ([^>]*)>>")
ROOT = Path(__file__).resolve().parents[2]


def directive(nonce: str, **params: int) -> str:
    """The directive text a client puts in its user message."""
    args = " ".join(f"{k}={v}" for k, v in params.items())
    return f"<<stream nonce={nonce} {args}>>".replace("  ", " ")


def expected_content(nonce: str, chunks: int) -> str:
    return "".join(_pieces(nonce, chunks))


def _pieces(nonce: str, chunks: int) -> list[str]:
    return [f"{nonce}:{i};" for i in range(chunks)]


def _parse(body: Any) -> dict[str, str]:
    messages = body.get("messages", []) if isinstance(body, dict) else []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        match = DIRECTIVE.search(str(content or ""))
        if match:
            return dict(part.split("=", 1) for part in match.group(1).split() if "=" in part)
    return {}


# --------------------------------------------------------------------- server


async def _serve(port: int) -> None:
    from aiohttp import web

    stats = {"requests": 0, "open": 0, "max_open": 0}

    async def models(_request: web.Request) -> web.Response:
        data = [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]
        return web.json_response({"object": "list", "data": data})

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def chat(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": {"message": "not JSON", "type": "invalid_request_error"}}, 400)
        params = _parse(body)
        nonce = params.get("nonce", "x")
        chunks = int(params.get("chunks", 1))
        delay = int(params.get("delay_ms", 0)) / 1000
        if "head_ms" in params:
            await asyncio.sleep(int(params["head_ms"]) / 1000)
        envelope = {
            "id": f"chatcmpl-{nonce}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(body.get("model", "")),
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": expected_content(nonce, chunks)}
            return web.json_response(
                {
                    **envelope,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": 10 + chunks},
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:

            async def send(delta: dict[str, Any], finish: str | None = None) -> None:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                await response.write(f"data: {json.dumps({**envelope, 'choices': [choice]})}\n\n".encode())

            await send({"role": "assistant", "content": ""})
            for i, piece in enumerate(_pieces(nonce, chunks)):
                if str(i) == params.get("reset_after"):
                    _reset(request)
                    raise asyncio.CancelledError
                if str(i) == params.get("stall_after"):
                    await asyncio.sleep(int(params.get("stall_ms", 0)) / 1000)
                if str(i) == params.get("malformed_after"):
                    await response.write(b"data: {not json\n\n")
                if delay:
                    await asyncio.sleep(delay)
                await send({"content": piece})
            await send({}, "stop")
            usage = {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": 10 + chunks}
            await response.write(
                f"data: {json.dumps({**envelope, 'choices': [], 'usage': usage})}\n\n".encode()
            )
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            stats["open"] -= 1

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", get_stats)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    await web.SockSite(runner, sock, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"slow-stream upstream on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def _reset(request: Any) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        import uvloop

        uvloop.run(_serve(port))
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(_serve(port))


# --------------------------------------------------------------- test handle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowStreamUpstream:
    """Starts the upstream as a subprocess on a free loopback port; `stop` always ends it."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._log = log_dir / f"slow-upstream-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SlowStreamUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> SlowStreamUpstream:
        self._log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.slow_stream_upstream", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slow upstream exited: {self._log.read_text(errors='replace')}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slow upstream did not start")

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=2) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


if __name__ == "__main__":
    main()
