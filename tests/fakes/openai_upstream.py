"""A real, scripted OpenAI-protocol HTTP server for tests.

`FakeOpenAI` serves `POST /v1/chat/completions` and `GET /v1/models` on
127.0.0.1 from a background thread running its own event loop (aiohttp.web),
so anything that speaks HTTP can call it: an in-process provider or a separate
`bmo serve` process. Each chat request consumes the next scripted `Reply`
(FIFO; `Text("ok")` when the script is empty) and is recorded in `requests`.

    with FakeOpenAI() as upstream:
        upstream.script(Text("hello"), ToolCalls([("call_1", "read_file", '{"path": "a"}')]))
        ...  # point a provider at upstream.base_url
        assert upstream.requests[0]["body"]["model"] == "fake-model"
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "BreakMidStream",
    "Empty",
    "Error",
    "FakeOpenAI",
    "Length",
    "MalformedStream",
    "Reply",
    "Slow",
    "Text",
    "ToolCalls",
]

_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Text:
    """An assistant text answer, streamed as `chunks` deltas."""

    text: str
    usage: tuple[int, int] = (10, 5)
    finish_reason: str = "stop"
    chunks: int = 3


@dataclass(frozen=True)
class ToolCalls:
    """Tool calls `(id, name, arguments_json)`; streamed as fragments split by index."""

    calls: list[tuple[str, str, str]]
    usage: tuple[int, int] = (10, 5)
    text: str = ""


@dataclass(frozen=True)
class Error:
    """An HTTP error with an OpenAI error envelope (never streamed, like OpenAI)."""

    status: int
    message: str = "upstream says no"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BreakMidStream:
    """Streams the role and some content, then drops the connection (no `[DONE]`)."""

    text: str = "partial"


@dataclass(frozen=True)
class MalformedStream:
    """A 200 event stream whose events are `data: {not json`."""


@dataclass(frozen=True)
class Slow:
    """Sleeps `seconds` before answering with `then`."""

    seconds: float
    then: Reply


@dataclass(frozen=True)
class Empty:
    """Empty content, finish reason "stop"."""

    usage: tuple[int, int] = (10, 1)


@dataclass(frozen=True)
class Length:
    """Text cut off by the token limit: finish reason "length"."""

    text: str
    usage: tuple[int, int] = (10, 5)


Reply = Text | ToolCalls | Error | BreakMidStream | MalformedStream | Slow | Empty | Length


class FakeOpenAI:
    """Context manager; serves on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._startup_error: BaseException | None = None
        self.port = 0
        self.base_url = ""

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> FakeOpenAI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("FakeOpenAI did not start")
        if self._startup_error is not None:
            raise RuntimeError(f"FakeOpenAI failed to start: {self._startup_error}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT_S)
        self._loop = self._thread = None

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        assert self._sock is not None
        await web.SockSite(self._runner, self._sock).start()

    # ------------------------------------------------------------ scripting

    def script(self, *replies: Reply) -> None:
        """Queue replies; each chat request consumes one, `Text("ok")` when none is left."""
        with self._lock:
            self._script.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Text("ok")

    def _record(self, request: web.Request, body: Any) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        entry = {
            "body": body,
            "headers": {key.lower(): value for key, value in request.headers.items()},
            "peer": f"{peer[0]}:{peer[1]}" if peer else "",
        }
        with self._lock:
            self.requests.append(entry)

    # ------------------------------------------------------------- handlers

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            self._record(request, None)
            return _error_response(Error(400, "request body is not JSON"))
        self._record(request, body)
        reply = self._next_reply()
        while isinstance(reply, Slow):
            await asyncio.sleep(reply.seconds)
            reply = reply.then
        try:
            return await _answer(request, reply, _Call.of(body))
        except ConnectionResetError:  # the client gave up (e.g. its read timeout)
            raise asyncio.CancelledError from None


@dataclass(frozen=True)
class _Call:
    """What the handler needs from the request body."""

    model: str
    stream: bool
    include_usage: bool
    id: str
    created: int

    @staticmethod
    def of(body: Any) -> _Call:
        body = body if isinstance(body, dict) else {}
        options = body.get("stream_options") or {}
        return _Call(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream", False)),
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            id=f"chatcmpl-{uuid.uuid4().hex[:12]}",
            created=int(time.time()),
        )


async def _answer(request: web.Request, reply: Reply, call: _Call) -> web.StreamResponse:
    if isinstance(reply, Error):
        return _error_response(reply)
    if isinstance(reply, Empty):
        reply = Text("", usage=reply.usage)
    elif isinstance(reply, Length):
        reply = Text(reply.text, usage=reply.usage, finish_reason="length")
    if isinstance(reply, BreakMidStream):
        return await _break_mid_stream(request, reply, call)
    if isinstance(reply, MalformedStream):
        return await _malformed_stream(request, call)
    assert isinstance(reply, Text | ToolCalls)
    if call.stream:
        return await _stream(request, reply, call)
    return web.json_response(_completion(reply, call))


# -------------------------------------------------------------- JSON bodies


def _error_response(reply: Error) -> web.Response:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    error_type = kind.get(reply.status, "rate_limit_error" if reply.status == 429 else "server_error")
    envelope = {"error": {"message": reply.message, "type": error_type, "param": None, "code": None}}
    return web.json_response(envelope, status=reply.status, headers=reply.headers)


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


def _wire_calls(calls: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in calls
    ]


def _completion(reply: Text | ToolCalls, call: _Call) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    finish = reply.finish_reason if isinstance(reply, Text) else "tool_calls"
    if isinstance(reply, ToolCalls):
        message["content"] = reply.text or None
        message["tool_calls"] = _wire_calls(reply.calls)
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage(reply.usage),
    }


# ---------------------------------------------------------------- streaming


def split_text(text: str, pieces: int) -> list[str]:
    """`text` in up to `pieces` non-empty, nearly equal parts."""
    if not text:
        return []
    n = max(1, min(pieces, len(text)))
    cuts = [len(text) * i // n for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def _argument_fragments(arguments: str) -> list[str]:
    """At least two fragments (some possibly empty), three when long enough."""
    pieces = split_text(arguments, 3)
    return [""] * (2 - len(pieces)) + pieces


class _Sse:
    """Writes `chat.completion.chunk` events to an open event-stream response."""

    def __init__(self, response: web.StreamResponse, call: _Call) -> None:
        self.response = response
        self.call = call

    @staticmethod
    async def open(request: web.Request, call: _Call) -> _Sse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        return _Sse(response, call)

    async def raw(self, data: str) -> None:
        await self.response.write(f"data: {data}\n\n".encode())

    async def chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        await self.raw(json.dumps(self._envelope([choice])))

    async def finish(self, reason: str, usage: tuple[int, int]) -> web.StreamResponse:
        await self.chunk({}, reason)
        if self.call.include_usage:
            await self.raw(json.dumps({**self._envelope([]), "usage": _usage(usage)}))
        await self.raw("[DONE]")
        await self.response.write_eof()
        return self.response

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        call = self.call
        return {
            "id": call.id,
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "choices": choices,
        }


async def _stream(request: web.Request, reply: Text | ToolCalls, call: _Call) -> web.StreamResponse:
    sse = await _Sse.open(request, call)
    await sse.chunk({"role": "assistant", "content": ""})
    pieces = reply.chunks if isinstance(reply, Text) else 3
    for piece in split_text(reply.text, pieces):
        await sse.chunk({"content": piece})
    if isinstance(reply, Text):
        return await sse.finish(reply.finish_reason, reply.usage)
    for index, (cid, name, arguments) in enumerate(reply.calls):
        for n, fragment in enumerate(_argument_fragments(arguments)):
            function = {"name": name, "arguments": fragment} if n == 0 else {"arguments": fragment}
            head = {"id": cid, "type": "function"} if n == 0 else {}
            await sse.chunk({"tool_calls": [{"index": index, **head, "function": function}]})
    return await sse.finish("tool_calls", reply.usage)


async def _break_mid_stream(request: web.Request, reply: BreakMidStream, call: _Call) -> web.StreamResponse:
    sse = await _Sse.open(request, call)
    await sse.chunk({"role": "assistant", "content": ""})
    for piece in split_text(reply.text, 2):
        await sse.chunk({"content": piece})
    await asyncio.sleep(0.05)  # let the client see the content before the drop
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError  # nothing more can be written; end the handler quietly


async def _malformed_stream(request: web.Request, call: _Call) -> web.StreamResponse:
    sse = await _Sse.open(request, call)
    await sse.chunk({"role": "assistant", "content": ""})
    await sse.raw("{not json")
    await sse.raw("{not json")
    await sse.raw("[DONE]")
    await sse.response.write_eof()
    return sse.response
