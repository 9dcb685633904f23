"""A fast OpenAI-protocol mock for benchmarks: raw ASGI, served by granian.

Non-streaming: a fixed ~300-byte chat.completion. Streaming: 20 chunks, a
usage chunk and `data: [DONE]`, no delay. Also `GET /v1/models`.
A streaming request whose body contains `__hold_ms=N__` (say, in a message) gets
its first two chunks (role, first token) at once and the rest after N ms: the bench holds many streams
open that way to measure memory per open stream; `GET /mock/holds` tells how many
are held now and at most (`GET /mock/holds?reset` restarts the high-water mark).
Run: granian --interface asgi --loop uvloop --workers 1 bench.mock_upstream:app --port 9100
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "mock-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "mock-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


_STREAM = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": f"tok{i} "}) for i in range(20))
    + _chunk({}, "stop")
    + b'data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"mock-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n'
    + b"data: [DONE]\n\n"
)
_FIRST = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "tok0 "})
_HOLD = re.compile(rb"__hold_ms=(\d+)__")
_HOLDS = {"now": 0, "max": 0}  # held streams open now and the high-water mark (one worker: one process)
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}
).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":
        if scope["path"] == "/mock/holds":  # ?reset clears the high-water mark
            if scope.get("query_string"):
                _HOLDS["max"] = _HOLDS["now"]
            await _send(send, 200, b"application/json", json.dumps(_HOLDS).encode())
            return
        await _send(send, 200, b"application/json", _MODELS)
        return
    stream = b'"stream": true' in body or b'"stream":true' in body
    hold = _HOLD.search(body) if stream else None
    if hold is not None:
        await _send_held(send, int(hold.group(1)) / 1000)
    elif stream:
        await _send(send, 200, b"text/event-stream", _STREAM)
    else:
        await _send(send, 200, b"application/json", _COMPLETION)


async def _send(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_held(send: Any, hold_s: float) -> None:
    """The role and first-token chunks now, the rest after `hold_s` (chunked encoding)."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send({"type": "http.response.body", "body": _FIRST, "more_body": True})
    _HOLDS["now"] += 1
    _HOLDS["max"] = max(_HOLDS["max"], _HOLDS["now"])
    try:
        await asyncio.sleep(hold_s)
    finally:
        _HOLDS["now"] -= 1
    await send({"type": "http.response.body", "body": _STREAM[len(_FIRST) :]})  # tok1 onwards
