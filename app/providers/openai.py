"""`type = "openai"`: any Chat Completions endpoint over HTTP.

One pooled keep-alive `aiohttp.ClientSession` per provider. Failures before
the response starts (429, 5xx, connection errors) are retried with backoff;
once a successful response has begun nothing is retried. Every upstream
failure leaves this module as one `app.errors` exception whose message names
the provider and never carries the API key. The wire format is in
`app.providers.openai_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import aiohttp
import msgspec
from yarl import URL

from app.config import Provider
from app.errors import BmoError, InvalidRequest, ProviderError, ProviderTimeout, RateLimited
from app.providers.base import (
    ModelEvent,
    ModelFinished,
    ModelRequest,
    TextDelta,
    ToolCallRequested,
)
from app.providers.openai_wire import (
    Chunk,
    SseDecoder,
    StreamAccumulator,
    WireError,
    decode_chunk,
    error_message,
    error_text,
    request_body,
)

__all__ = ["OpenAIProvider"]

_POOL_LIMIT = 2048  # open upstream streams per provider: one per concurrent client stream
_BACKOFF_BASE_S = 0.2
_MAX_DELAY_S = 10.0
_DRAIN_S = 0.5


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: the error to raise if it is not (or no longer) retried."""

    error: BmoError
    retryable: bool
    retry_after: float | None = None


class OpenAIProvider:
    """A provider speaking the OpenAI Chat Completions protocol."""

    def __init__(self, name: str, config: Provider) -> None:
        self.name = name
        self._config = config
        self._url = f"{config.base_url.rstrip('/')}/chat/completions"
        self._shown_url = _display_url(config.base_url)
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.connect_timeout_s,
            sock_connect=config.connect_timeout_s,
            sock_read=config.timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def models(self) -> tuple[str, ...]:
        return self._config.models

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        body = msgspec.json.encode(request_body(request))
        response = await self._post(body, request.model)
        try:
            if response.content_type != "application/json" and request.stream:
                events = self._stream_events(response)
            else:
                events = self._whole_events(response)
            async with aclosing(events):
                async for event in events:
                    yield event
            await _drain(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    # ------------------------------------------------------------ transport

    def _client(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use inside the running loop."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=_POOL_LIMIT)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._session_loop = loop
        return self._session

    async def _post(self, body: bytes, model: str) -> aiohttp.ClientResponse:
        """POST with retries; returns a 2xx response whose body is still unread."""
        attempt = 0
        while True:
            outcome = await self._attempt(body, model)
            if isinstance(outcome, aiohttp.ClientResponse):
                return outcome
            if not outcome.retryable or attempt >= self._config.max_retries:
                raise outcome.error
            await asyncio.sleep(_backoff(attempt, outcome.retry_after))
            attempt += 1

    async def _attempt(self, body: bytes, model: str) -> aiohttp.ClientResponse | _Failure:
        try:
            response = await self._client().post(
                self._url, data=body, headers=self._headers, allow_redirects=False
            )
        except aiohttp.ConnectionTimeoutError:
            error = ProviderTimeout(
                f"provider '{self.name}' did not accept a connection at {self._shown_url} "
                f"within {self._config.connect_timeout_s:g} s"
            )
            return _Failure(error, retryable=True)
        except TimeoutError:  # aiohttp.SocketTimeoutError: no response head within timeout_s
            return _Failure(self._read_timeout(), retryable=False)
        except aiohttp.InvalidURL:
            message = f"provider '{self.name}' has an invalid base_url {self._config.base_url!r}"
            return _Failure(ProviderError(message, code="upstream_unreachable"), retryable=False)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return _Failure(self._unreachable(exc), retryable=True)
        except aiohttp.ClientError as exc:
            message = f"provider '{self.name}' failed at {self._shown_url}: {type(exc).__name__}"
            return _Failure(ProviderError(message, code="upstream_error"), retryable=False)
        if response.status < 300:
            return response
        return await self._status_failure(response, model)

    async def _status_failure(self, response: aiohttp.ClientResponse, model: str) -> _Failure:
        try:
            detail = self._redact(error_message(await response.read()))
        except (TimeoutError, aiohttp.ClientError, OSError):
            detail = "(the error body could not be read)"
        finally:
            response.release()
        status = response.status
        header = response.headers.get("Retry-After")
        error = self._status_error(status, detail, model, header)
        return _Failure(error, retryable=status == 429 or status >= 500, retry_after=_retry_after(header))

    def _status_error(self, status: int, detail: str, model: str, retry_after: str | None) -> BmoError:
        who = f"provider '{self.name}'"
        if status in (400, 413, 422):
            return InvalidRequest(f"{who} rejected the request: {detail}", code="upstream_bad_request")
        if status in (401, 403):
            message = f"{who} refused the credentials (HTTP {status}): {detail}"
            return ProviderError(f"{message}; check providers.{self.name}.api_key", code="upstream_auth")
        if status == 404:
            message = f"{who} has no model '{model}' or no /chat/completions at {self._shown_url}: {detail}"
            return ProviderError(message, code="upstream_not_found")
        if status == 429:
            extra = {"Retry-After": retry_after} if retry_after else None
            message = f"{who} is rate limiting requests: {detail}"
            return RateLimited(message, code="upstream_rate_limited", headers=extra)
        if 300 <= status < 400:
            detail = f"redirected (HTTP {status}); check base_url {self._shown_url}"
        return ProviderError(f"{who} failed (HTTP {status}): {detail}", code="upstream_error")

    # ------------------------------------------------------------ decoding

    async def _stream_events(self, response: aiohttp.ClientResponse) -> AsyncIterator[ModelEvent]:
        decoder = SseDecoder()
        accumulator = StreamAccumulator()
        async with aclosing(self._payloads(response, decoder)) as payloads:
            async for payload in payloads:
                for text in accumulator.add(self._chunk(payload)):
                    yield TextDelta(text)
        if not decoder.done and accumulator.reported_finish is None:
            raise self._broken("the stream ended without a finish reason or [DONE]")
        for call in accumulator.tool_calls():
            yield ToolCallRequested(call)
        yield ModelFinished(accumulator.finish_reason(), accumulator.usage)

    async def _payloads(self, response: aiohttp.ClientResponse, decoder: SseDecoder) -> AsyncIterator[bytes]:
        """The `data:` payloads until `[DONE]` or end of body; transport errors mapped."""
        try:
            async for data in response.content.iter_any():
                for payload in decoder.feed(data):
                    yield payload
                if decoder.done:
                    return
            for payload in decoder.flush():
                yield payload
        except TimeoutError:
            raise self._read_timeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._broken(f"the connection dropped mid-stream ({type(exc).__name__})") from None

    async def _whole_events(self, response: aiohttp.ClientResponse) -> AsyncIterator[ModelEvent]:
        try:
            raw = await response.read()
        except TimeoutError:
            raise self._read_timeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._broken(f"the connection dropped mid-response ({type(exc).__name__})") from None
        accumulator = StreamAccumulator()
        for text in accumulator.add(self._chunk(raw)):
            yield TextDelta(text)
        for call in accumulator.tool_calls():
            yield ToolCallRequested(call)
        yield ModelFinished(accumulator.finish_reason(), accumulator.usage)

    def _chunk(self, payload: bytes) -> Chunk:
        try:
            chunk = decode_chunk(payload)
        except WireError as exc:
            raise self._broken(f"malformed response: {self._redact(str(exc))}") from None
        if chunk.error is not None:
            message = f"provider '{self.name}' reported an error: {self._redact(error_text(chunk.error))}"
            raise ProviderError(message, code="upstream_error")
        return chunk

    # ------------------------------------------------------------- errors

    def _read_timeout(self) -> ProviderTimeout:
        return ProviderTimeout(
            f"provider '{self.name}' sent nothing for {self._config.timeout_s:g} s "
            f"(providers.{self.name}.timeout_s)"
        )

    def _unreachable(self, exc: BaseException) -> ProviderError:
        reason = _connection_reason(exc)
        message = f"provider '{self.name}' is unreachable at {self._shown_url}: {reason}"
        return ProviderError(message, code="upstream_unreachable")

    def _broken(self, what: str) -> ProviderError:
        return ProviderError(
            f"provider '{self.name}' broke off the answer: {what}", code="upstream_stream_broken"
        )

    def _redact(self, text: str) -> str:
        key = self._config.api_key
        return text.replace(key, "***") if key else text


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows `[DONE]` (the chunked terminator) so the connection is pooled again."""
    if response.content.at_eof():
        return
    try:
        async with asyncio.timeout(_DRAIN_S):
            await response.content.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass  # release() then closes the connection instead of pooling it


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, _MAX_DELAY_S)
    return min(_BACKOFF_BASE_S * 2**attempt, _MAX_DELAY_S)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form is ignored (plain backoff then)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def _connection_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, ConnectionRefusedError) or isinstance(
        getattr(exc, "os_error", None), ConnectionRefusedError
    ):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    if isinstance(exc, ConnectionResetError | aiohttp.ClientConnectionResetError):
        return "connection reset"
    return type(exc).__name__


def _display_url(base_url: str) -> str:
    """The base URL without credentials or query, for messages."""
    try:
        url = URL(base_url)
        if url.absolute:
            url = url.with_user(None).with_password(None)
        return str(url.with_query(None).with_fragment(None)) or repr(base_url)
    except ValueError:
        return repr(base_url)
