"""The outermost ASGI layer: request id, bearer auth and the request lifecycle.

It wraps the whole Litestar app (so 404s and 405s, which never reach
Litestar middleware, still get an id, a record and a ledger row) and closes
every lifecycle a handler left open, with the outcome the status implies.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.agent.drain import Drain
from app.agent.lifecycle import RequestLifecycle, RouteDefaults
from app.commands.execute import Executor
from app.errors import BmoError, HeadersTooLarge, Unauthorized
from app.http.errors import envelope_bytes, outcome_for_status
from app.http.identity import TrustedProxies, identify
from app.http.routes import is_unprotected, route_name
from app.http.stall import StallWatch
from app.telemetry import Records

__all__ = ["BmoAsgi", "TokenCheck"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SELF_FIRING_ROUTES = frozenset({"chat_completions"})  # they fire once the body is read
SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_HEADER_BYTES = 16 * 1024  # one header line (name and value)
MAX_HEADERS_BYTES = 64 * 1024  # all of them together


def new_request_id() -> str:
    """A random UUID4 as 32 hex digits, without a urandom syscall per request (ids, not secrets)."""
    value = (random.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC << 60) | (0x8 << 60)
    return f"{value:032x}"


class TokenCheck:
    """Constant-time bearer check: digests make the comparison length-independent."""

    def __init__(self, token: str | None) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @classmethod
    def from_digest(cls, hex_digest: str | None) -> TokenCheck:
        """The check from the token's SHA-256 alone (how `bmo serve` hands it to workers)."""
        check = cls(None)
        check._digest = bytes.fromhex(hex_digest) if hex_digest else None
        return check

    @property
    def required(self) -> bool:
        return self._digest is not None

    def allows(self, authorization: bytes | None) -> bool:
        if self._digest is None:
            return True
        presented = b""
        if authorization and authorization[:7].lower() == b"bearer ":
            presented = authorization[7:].strip()
        return hmac.compare_digest(hashlib.sha256(presented).digest(), self._digest)


class BmoAsgi:
    def __init__(
        self,
        inner: ASGIApp,
        *,
        tokens: TokenCheck,
        executor: Executor,
        records: Records,
        defaults: RouteDefaults,
        session_fallbacks: tuple[str, ...] = (),
        proxies: TrustedProxies | None = None,
        drain: Drain | None = None,
        stalls: StallWatch | None = None,
    ) -> None:
        self._inner = inner
        self._drain = drain
        self._stalls = stalls
        self._tokens = tokens
        self._executor = executor
        self._records = records
        self._defaults = defaults
        self._fallbacks = tuple(h.lower().encode("latin-1") for h in session_fallbacks)
        self._proxies = proxies or TrustedProxies.parse(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        request_id = new_request_id()
        headers = _headers(scope)
        route = route_name(scope["path"])
        lifecycle = self._lifecycle(request_id, route, headers, scope) if route else None
        scope["bmo"] = lifecycle
        scope["bmo.request_id"] = request_id
        status = [0, 0]  # status code, body completed
        send = _tagging_send(send, request_id, status)
        too_large = _headers_too_large(scope["headers"])
        if too_large is not None:
            if lifecycle is None:
                lifecycle = scope["bmo"] = self._lifecycle(request_id, "unmatched", headers, scope)
            await self._refuse(send, lifecycle, too_large)
            return
        if self._stalls is not None:
            send = self._stalls.watch(send, lifecycle)
        if not is_unprotected(scope["path"]) and not self._tokens.allows(headers.get(b"authorization")):
            if lifecycle is None:  # /schema, /healthz/..: a wrong token is recorded all the same
                lifecycle = scope["bmo"] = self._lifecycle(request_id, "unmatched", headers, scope)
            await self._refuse(send, lifecycle)
            return
        if lifecycle is not None and route not in SELF_FIRING_ROUTES:
            await lifecycle.fire()
        try:
            await self._inner(scope, receive, send)
        finally:
            if lifecycle is not None:
                await self._close(lifecycle, status[0], bool(status[1]))

    async def _close(self, lifecycle: RequestLifecycle, code: int, completed: bool) -> None:
        """Finish what the handler left open, with the outcome the response implies."""
        await lifecycle.settled()
        if lifecycle.finished:
            return
        if code and completed:
            await lifecycle.finish(lifecycle.forced_outcome or outcome_for_status(code), code)
        else:  # no response, or the body never completed: the client went away
            await lifecycle.finish("cancelled", 499, error="client disconnected")

    def _lifecycle(
        self, request_id: str, route: str, headers: dict[bytes, bytes], scope: Scope
    ) -> RequestLifecycle:
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        identity = identify(headers, peer or None, self._proxies)
        return RequestLifecycle(
            request_id=request_id,
            route=route,
            session_id=self._session_id(headers),
            client_ua=_text(headers.get(b"user-agent")),
            defaults=self._defaults,
            executor=self._executor,
            records=self._records,
            requester=identity.requester.label() if identity.requester else "",
            peer=peer,
            ignored_identity=identity.ignored,
            drain=self._drain,
        )

    def _session_id(self, headers: dict[bytes, bytes]) -> str:
        """X-BMO-Session-Id (validated by the chat route), else the first valid fallback header."""
        own = headers.get(b"x-bmo-session-id")
        if own is not None:
            return _text(own)[:256]
        for name in self._fallbacks:
            value = _text(headers.get(name))
            if value and SESSION_ID.fullmatch(value):
                return value
        return ""

    async def _refuse(
        self, send: Send, lifecycle: RequestLifecycle | None, error: BmoError | None = None
    ) -> None:
        """Answer before the app sees the request: a wrong token (401) or oversized headers (431)."""
        error = error or Unauthorized("Missing or invalid bearer token.")
        if lifecycle is not None:
            lifecycle.note_error(error)
        body = envelope_bytes(error)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if lifecycle is not None:
            await lifecycle.finish(outcome_for_status(error.status), error.status)


def _headers_too_large(raw: Any) -> HeadersTooLarge | None:
    """An app-level bound on header size, whatever the HTTP server in front allows."""
    total = 0
    for name, value in raw:
        size = len(name) + len(value)
        if size > MAX_HEADER_BYTES:
            shown = name.decode("latin-1")[:64]
            return HeadersTooLarge(
                f"Request header '{shown}' is {size} bytes; the limit is {MAX_HEADER_BYTES} bytes per header."
            )
        total += size
    if total > MAX_HEADERS_BYTES:
        return HeadersTooLarge(
            f"Request headers total {total} bytes; the limit is {MAX_HEADERS_BYTES} bytes."
        )
    return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k: v for k, v in scope["headers"]}


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


def _tagging_send(send: Send, request_id: str, status: list[int]) -> Send:
    header = (b"x-request-id", request_id.encode())

    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            status[1] = 1  # only once the last body part was handed over

    return tagged
