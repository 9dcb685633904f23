"""A real, scripted Anthropic Messages-API server for tests.

    with FakeAnthropic() as fake:
        fake.script(AText("hello"), AError(429, "slow down"))
        provider = AnthropicProvider("claude", Provider(type="anthropic", base_url=fake.base_url, ...))

It listens on 127.0.0.1:<free port> in a background thread with its own event
loop. Each POST /v1/messages pops the next scripted reply (an empty script
answers with the text "ok") and honours the request's `stream` flag.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["ABreak", "AError", "AText", "AToolUse", "FakeAnthropic", "Reply"]


@dataclass(frozen=True)
class AText:
    text: str
    usage: tuple[int, int] = (10, 5)
    stop_reason: str = "end_turn"


@dataclass(frozen=True)
class AToolUse:
    calls: list[tuple[str, str, str]]  # (id, name, input JSON text)
    text: str = ""
    usage: tuple[int, int] = (10, 5)


@dataclass(frozen=True)
class AError:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ABreak:
    """Accept the request, start the response, then drop the connection."""


Reply = AText | AToolUse | AError | ABreak

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _halves(text: str) -> list[str]:
    """At least two fragments (the first may be empty, as upstream does)."""
    if len(text) < 2:
        return ["", text]
    mid = len(text) // 2
    return [text[:mid], text[mid:]]


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _message(model: str, content: list[dict[str, Any]], stop: str | None, usage: tuple[int, int]) -> dict:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _blocks(reply: AText | AToolUse) -> list[dict[str, Any]]:
    if isinstance(reply, AText):
        return [{"type": "text", "text": reply.text}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    for call_id, name, args in reply.calls:
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": json.loads(args or "{}")})
    return blocks


def _stop(reply: AText | AToolUse) -> str:
    return reply.stop_reason if isinstance(reply, AText) else "tool_use"


def _events(model: str, reply: AText | AToolUse) -> list[bytes]:
    start = _message(model, [], None, (reply.usage[0], 1))
    out = [_sse("message_start", {"message": start}), _sse("ping", {})]
    index = 0
    text = reply.text
    if isinstance(reply, AText) or text:
        out.append(_sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
        for piece in _halves(text):
            delta = {"type": "text_delta", "text": piece}
            out.append(_sse("content_block_delta", {"index": 0, "delta": delta}))
        out.append(_sse("content_block_stop", {"index": 0}))
        index = 1
    if isinstance(reply, AToolUse):
        for call_id, name, args in reply.calls:
            block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            out.append(_sse("content_block_start", {"index": index, "content_block": block}))
            for piece in _halves(args):
                delta = {"type": "input_json_delta", "partial_json": piece}
                out.append(_sse("content_block_delta", {"index": index, "delta": delta}))
            out.append(_sse("content_block_stop", {"index": index}))
            index += 1
    stop = {"stop_reason": _stop(reply), "stop_sequence": None}
    out.append(_sse("message_delta", {"delta": stop, "usage": {"output_tokens": reply.usage[1]}}))
    out.append(_sse("message_stop", {}))
    return out


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-anthropic", daemon=True)

    def script(self, *replies: Reply) -> FakeAnthropic:
        with self._lock:
            self._replies.extend(replies)
        return self

    # --- lifecycle ---------------------------------------------------------

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    # --- handling ----------------------------------------------------------

    def _next(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else AText("ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers)})
        reply = self._next()
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        if isinstance(reply, AError):
            error = {"type": _ERROR_TYPES.get(reply.status, "api_error"), "message": reply.message}
            return web.json_response(
                {"type": "error", "error": error}, status=reply.status, headers=reply.headers
            )
        if isinstance(reply, ABreak):
            return await self._break(request, model, stream)
        if not stream:
            return web.json_response(_message(model, _blocks(reply), _stop(reply), reply.usage))
        response = await self._open_stream(request)
        for chunk in _events(model, reply):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        return response

    async def _break(self, request: web.Request, model: str, stream: bool) -> web.StreamResponse:
        if stream:
            response = await self._open_stream(request)
            for chunk in _events(model, AText("this reply never ends"))[:4]:
                await response.write(chunk)
        else:
            response = web.StreamResponse(
                headers={"content-type": "application/json", "content-length": "4096"}
            )
            await response.prepare(request)
            await response.write(b'{"id": "msg_fake", "content": [')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response
