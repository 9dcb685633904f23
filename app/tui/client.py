"""The TUI's HTTP client: the same API Open WebUI and operators use.

Blocking (httpx.Client), called only from worker threads. One httpx.Client is
shared by those threads: its connection pool is thread-safe, and this class
keeps no other mutable state. The bearer token lives only in the client's
default headers; it is never part of a message, an exception or `repr`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "BmoClient",
    "ChatDelta",
    "ChatDone",
    "ChatEvent",
    "ChatStarted",
    "normalize_base_url",
    "user_agent",
]

CHAT_READ_TIMEOUT_S = 90.0  # the server sends `: keep-alive` every 15 s while tools run


class ApiError(Exception):
    """A failed call, with a message fit for the screen (never the token)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True, slots=True)
class ChatStarted:
    request_id: str


@dataclass(frozen=True, slots=True)
class ChatDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ChatDone:
    finish_reason: str


ChatEvent = ChatStarted | ChatDelta | ChatDone


def normalize_base_url(url: str) -> str:
    """`http://h:9000`, `http://h:9000/` and Open WebUI's `http://h:9000/v1` are the same server."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url[: -len("/v1")] if url.endswith("/v1") else url


def user_agent() -> str:
    try:
        return f"bmo-tui/{version('bmo')}"
    except PackageNotFoundError:
        return "bmo-tui"


def _error_message(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "error")
        if error.get("code") == "queued":
            message += f" (queued as run {error.get('run_id')}, position {error.get('position')})"
        return ApiError(
            f"{response.status_code}: {message}",
            status=response.status_code,
            code=str(error.get("code") or ""),
        )
    return ApiError(f"HTTP {response.status_code}", status=response.status_code)


class BmoClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        session_id: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.session_id = session_id
        headers = {"User-Agent": user_agent()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:
        return f"BmoClient({self.base_url!r}, session_id={self.session_id!r})"

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, **params: Any) -> Any:
        return self._json("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _error_message(response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{path}: the server did not answer JSON") from None

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def posture(self) -> dict[str, Any]:
        return self._get("/v1/openai-compat/posture")

    def runs(
        self, *, limit: int = 30, route: str | None = None, traffic: str | None = None
    ) -> list[dict[str, Any]]:
        page = self._get("/v1/openai-compat/runs", limit=limit, route=route, traffic=traffic)
        return list(page.get("data") or [])

    def run_events(self, request_id: str) -> list[dict[str, Any]]:
        return list(self._get(f"/v1/openai-compat/runs/{request_id}/events").get("data") or [])

    def permissions(self) -> list[dict[str, Any]]:
        body = self._get("/v1/permissions")
        rows = body.get("data") if isinstance(body, dict) else body
        return [q for q in rows or [] if q.get("status", "pending") == "pending"]

    def decide(self, question_id: str, decision: str, digest: str | None = None) -> dict[str, Any]:
        """Answer bound to the digest of the arguments shown (a changed question is refused)."""
        body: dict[str, Any] = {"decision": decision, "via": "tui"}
        if digest:
            body["digest"] = digest
        return self._json("POST", f"/v1/permissions/{question_id}", json=body)

    def follow_run(self, request_id: str) -> Iterator[dict[str, Any]]:
        """A run's events, replayed then live, until it finishes (SSE `follow=true`)."""
        timeout = httpx.Timeout(10.0, read=CHAT_READ_TIMEOUT_S)
        path = f"/v1/openai-compat/runs/{request_id}/events"
        try:
            with self._http.stream("GET", path, params={"follow": "true"}, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_message(response)
                for payload in _sse_payloads(response.iter_lines()):
                    if isinstance(payload, dict) and "type" in payload:
                        yield payload
        except httpx.HTTPError as exc:
            raise ApiError(f"follow {request_id[:8]}: {type(exc).__name__}") from None

    def follow_permissions(self) -> Iterator[list[dict[str, Any]]]:
        """The pending questions now, then each time they change (SSE `follow=true`), until closed."""
        timeout = httpx.Timeout(10.0, read=CHAT_READ_TIMEOUT_S)
        try:
            with self._http.stream(
                "GET", "/v1/permissions", params={"follow": "true"}, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_message(response)
                for payload in _sse_payloads(response.iter_lines()):
                    if isinstance(payload, dict):
                        rows = payload.get("data") or []
                        yield [q for q in rows if q.get("status", "pending") == "pending"]
        except httpx.HTTPError as exc:
            raise ApiError(f"follow questions: {type(exc).__name__}") from None

    def session_of(self, request_id: str) -> str:
        """The session a run belongs to (its `Fired` event), "" when it named none."""
        events = self._get(f"/v1/openai-compat/runs/{request_id}/events").get("data") or []
        fired = next((e for e in events if e.get("type") == "Fired"), None)
        return str((fired or {}).get("data", {}).get("session_id") or "")

    def chat(self, prompt: str, *, model: str | None = None) -> Iterator[ChatEvent]:
        """One turn in this TUI's session, streamed; the server keeps the transcript."""
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": True}
        if model:
            body["model"] = model
        headers = {"X-BMO-Session-Id": self.session_id}
        timeout = httpx.Timeout(10.0, read=CHAT_READ_TIMEOUT_S)
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_message(response)
                yield ChatStarted(response.headers.get("x-request-id", ""))
                yield from _chat_events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise ApiError(f"chat stream broke: {type(exc).__name__}: {exc}") from None


def _sse_payloads(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and `: keep-alive` comments
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            continue


def _chat_events(lines: Iterator[str]) -> Iterator[ChatEvent]:
    finish = ""
    for chunk in _sse_payloads(lines):
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            error = chunk["error"] or {}
            raise ApiError(
                f"stream error: {error.get('message', 'unknown')}", code=str(error.get("code", ""))
            )
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield ChatDelta(text)
            finish = choice.get("finish_reason") or finish
    yield ChatDone(finish)
