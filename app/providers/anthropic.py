"""`type = "anthropic"`: the Messages API over HTTP (aiohttp).

The HTTP shell only: one pooled keep-alive session per provider, retries with
backoff before the response is accepted, and the one place upstream failures
become the error tree. Request/response mapping lives in `anthropic_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from app.config import Provider
from app.errors import BmoError, InvalidRequest, ProviderError, ProviderTimeout, RateLimited
from app.providers import anthropic_wire as wire
from app.providers.base import ModelEvent, ModelRequest

__all__ = ["AnthropicProvider"]

_RETRY_STATUSES = frozenset({429, 529})
_BAD_REQUEST_STATUSES = frozenset({400, 413, 422})


class AnthropicProvider:
    """One Anthropic-compatible upstream; see `ChatProvider`."""

    def __init__(
        self,
        name: str,
        config: Provider,
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.name = name
        self._config = config
        self._url = wire.messages_url(config.base_url)
        self._headers = wire.build_headers(config.api_key)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def models(self) -> tuple[str, ...]:
        return tuple(self._config.models)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        body = msgspec.json.encode(wire.build_body(request))
        response = await self._send(body)
        try:
            if request.stream:
                async for event in self._read_stream(response):
                    yield event
            else:
                for event in await self._read_message(response):
                    yield event
        finally:
            response.release()

    async def aclose(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    # --- transport ---------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._config.connect_timeout_s, sock_read=self._config.timeout_s
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2048),  # one per concurrent stream (default: 100)
                timeout=timeout,
                headers=self._headers,
                raise_for_status=False,
                trust_env=False,
            )
            self._loop = loop
        return self._session

    async def _send(self, body: bytes) -> aiohttp.ClientResponse:
        """POST with retries; returns an accepted (2xx) response or raises the mapped error."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client().post(self._url, data=body)
            except TimeoutError:
                raise self._timeout() from None
            except aiohttp.ClientConnectionError as exc:
                failure: BmoError = self._unreachable(exc)
            else:
                if response.status < 300:
                    return response
                failure = await self._status_error(response)
                retry_after = wire.parse_retry_after(response.headers.get("retry-after"))
                if not _retryable(response.status):
                    raise failure
            if attempt >= self._config.max_retries:
                raise failure
            await asyncio.sleep(
                wire.backoff_delay(attempt, retry_after, self._backoff_base_s, self._backoff_cap_s)
            )
            attempt += 1

    async def _read_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[ModelEvent]:
        decoder, assembler = wire.SseDecoder(), wire.StreamAssembler()
        try:
            async for chunk in response.content.iter_any():
                for sse in decoder.feed(chunk):
                    for event in assembler.feed(sse):
                        yield event
            for sse in decoder.close():
                for event in assembler.feed(sse):
                    yield event
        except TimeoutError:
            raise self._timeout() from None
        except aiohttp.ClientError as exc:
            raise self._broken(type(exc).__name__) from None
        if not assembler.done:
            raise self._broken("the stream ended before message_stop")

    async def _read_message(self, response: aiohttp.ClientResponse) -> list[ModelEvent]:
        try:
            raw = await response.read()
        except TimeoutError:
            raise self._timeout() from None
        except aiohttp.ClientError as exc:
            raise self._broken(type(exc).__name__) from None
        try:
            payload = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise self._broken("the response is not JSON") from None
        return wire.parse_message(payload)

    # --- error mapping (the one place) -----------------------------------

    async def _status_error(self, response: aiohttp.ClientResponse) -> BmoError:
        try:
            raw = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            response.release()
        status = response.status
        detail = wire.scrub(wire.error_message(raw), self._config.api_key) or f"HTTP {status}"
        where = f"anthropic provider '{self.name}'"
        if status in _BAD_REQUEST_STATUSES:
            return InvalidRequest(detail, code="upstream_bad_request")
        if status in (401, 403):
            return ProviderError(f"{where} rejected the credentials: {detail}", code="upstream_auth")
        if status == 404:
            return ProviderError(f"{where} returned not found: {detail}", code="upstream_not_found")
        if status in _RETRY_STATUSES:
            hint = response.headers.get("retry-after")
            return RateLimited(
                f"{where} is rate limited: {detail}",
                code="upstream_rate_limited",
                headers={"Retry-After": hint} if hint else None,
            )
        return ProviderError(f"{where} failed with HTTP {status}: {detail}", code="upstream_error")

    def _unreachable(self, exc: aiohttp.ClientConnectionError) -> ProviderError:
        detail = wire.scrub(str(exc) or type(exc).__name__, self._config.api_key)
        return ProviderError(
            f"anthropic provider '{self.name}' is unreachable: {detail}", code="upstream_unreachable"
        )

    def _timeout(self) -> ProviderTimeout:
        return ProviderTimeout(f"anthropic provider '{self.name}' timed out")

    def _broken(self, detail: str) -> ProviderError:
        return ProviderError(
            f"anthropic provider '{self.name}': upstream stream broken ({detail})",
            code="upstream_stream_broken",
        )


def _retryable(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500
