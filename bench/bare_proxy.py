"""The bare pass-through: Litestar + granian + one aiohttp ClientSession, no bmo logic.

It decodes only `stream` (msgspec), forwards the raw request body to the
upstream and the upstream's bytes back (SSE streamed through unchanged). It is
the ceiling for any gateway built on the same stack.
Run: BARE_UPSTREAM=http://127.0.0.1:9100 granian --interface asgi --loop uvloop \
     --http 1 --workers 1 --no-ws --port 9200 bench.bare_proxy:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100").rstrip("/")
# Upstream connections; only the many-open-streams test gets near it (wrk runs use <= 64).
POOL_LIMIT = int(os.environ.get("BARE_POOL_LIMIT", "2048"))
_FORWARD = {"content-type": "application/json", "authorization": "Bearer x"}


class _Head(msgspec.Struct):
    stream: bool = False


_decode = msgspec.json.Decoder(_Head).decode


async def _open_client(app: Litestar) -> None:
    connector = aiohttp.TCPConnector(limit=POOL_LIMIT)
    app.state.client = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def _close_client(app: Litestar) -> None:
    await app.state.client.close()


@post("/v1/chat/completions", status_code=200)
async def chat(request: Request[None, None, State], state: State) -> Response[bytes] | Stream:
    body = await request.body()
    client: aiohttp.ClientSession = state.client
    upstream = await client.post(f"{UPSTREAM}/v1/chat/completions", data=body, headers=_FORWARD)
    if not _decode(body).stream:
        async with upstream:
            data = await upstream.read()
        return Response(data, status_code=upstream.status, media_type="application/json")
    return Stream(_relay(upstream), status_code=upstream.status, media_type="text/event-stream")


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async with upstream:
        async for chunk in upstream.content.iter_any():
            yield chunk


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(
    route_handlers=[chat, health],
    on_startup=[_open_client],
    on_shutdown=[_close_client],
    openapi_config=None,
    logging_config=None,
)
