"""The one place errors become HTTP: the OpenAI envelope, never a traceback."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from app.errors import (
    BmoError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.outcomes import Outcome

__all__ = ["envelope_bytes", "exception_handler", "outcome_for_status", "to_bmo_error"]

log = logging.getLogger(__name__)
_MISSING = re.compile(r"missing required field `([^`]+)`")
_encode = msgspec.json.Encoder().encode

_BY_STATUS: dict[int, type[BmoError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def envelope(exc: BmoError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message": exc.message,
        "type": exc.type,
        "param": exc.param,
        "code": exc.code,
    }
    body.update(exc.extra)
    return {"error": body}


def envelope_bytes(exc: BmoError) -> bytes:
    return _encode(envelope(exc))


def outcome_for_status(status: int) -> Outcome:
    if status == 401:
        return "auth_failed"
    if status >= 500:
        return "error_500"
    if status >= 400:
        return "invalid_request"
    return "final_answer"


def to_bmo_error(exc: Exception, body: bytes | None = None) -> BmoError:
    """`body`, when known, lets a decode failure be named by its kind rather than a parser's wording."""
    if isinstance(exc, BmoError):
        return exc
    if isinstance(exc, ValidationException):
        return InvalidRequest(_validation_message(exc), param=_validation_param(exc))
    if isinstance(exc, NotFoundException):
        return NotFound("Not found: no such route or resource.")
    if isinstance(exc, MethodNotAllowedException):  # keeps Litestar's `Allow` header (RFC 9110)
        return MethodNotAllowed("Method not allowed for this route.", headers=dict(exc.headers or {}))
    if _is_body_decode_failure(exc):
        return _decode_failure(exc, body)
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):  # msgspec on deep nesting
        return InvalidRequest("The request body is nested too deeply.", code="invalid_json")
    if isinstance(exc, HTTPException):
        cls = _BY_STATUS.get(exc.status_code)
        if cls is not None:
            return cls(str(exc.detail))
        if exc.status_code == 400:
            return InvalidRequest(
                f"Could not parse the request body as JSON: {exc.detail}", code="invalid_json"
            )
        if 400 <= exc.status_code < 500:
            return InvalidRequest(str(exc.detail))
    log.exception("unhandled error", exc_info=exc)
    return InternalError("The server failed to handle this request.")


def _is_body_decode_failure(exc: Exception) -> bool:
    """The body could not be decoded: msgspec's DecodeError or UnicodeDecodeError, raw or wrapped."""
    seen: BaseException | None = exc
    for _ in range(4):  # Litestar wraps twice: ClientException <- SerializationException <- DecodeError
        if isinstance(seen, UnicodeDecodeError | msgspec.DecodeError):
            return True
        if seen is None:
            return False
        seen = seen.__cause__
    return False


def _decode_failure(exc: Exception, body: bytes | None) -> InvalidRequest:
    """Our own message by kind: invalid UTF-8 is checked on the bytes, not read off the parser's text."""
    if isinstance(exc, UnicodeDecodeError) or (body is not None and not _is_utf8(body)):
        return InvalidRequest("The request body is not valid UTF-8 JSON.", code="invalid_json")
    detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
    return InvalidRequest(f"Could not parse the request body as JSON: {detail}", code="invalid_json")


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _cached_body(request: Request[Any, Any, Any]) -> bytes | None:
    """The body Litestar already read for this request, if any (it keeps it in the connection state)."""
    state = getattr(request, "_connection_state", None)
    body = getattr(state, "body", None)
    return body if isinstance(body, bytes) else None


def _validation_message(exc: ValidationException) -> str:
    details = exc.extra if isinstance(exc.extra, list) else []
    found = [d for d in details if isinstance(d, dict) and d.get("message")]
    where = "query parameter" if found and all(d.get("source") == "query" for d in found) else "body"
    if found:
        return f"Invalid request {where}: " + "; ".join(_detail(d) for d in found)
    return f"Invalid request body: {exc.detail}"


def _detail(detail: dict[str, Any]) -> str:
    key = detail.get("key")
    if key == "data" and detail["message"] == "'data'":  # Litestar's KeyError text: no body at all
        return "the body is empty; expected a JSON object"
    return f"{key}: {detail['message']}" if key and key != "data" else str(detail["message"])


def _validation_param(exc: ValidationException) -> str | None:
    """The offending field; `data` is Litestar's name for the whole body, not a field."""
    details = exc.extra if isinstance(exc.extra, list) else []
    for d in details:
        if isinstance(d, dict) and d.get("key"):
            key = str(d["key"])
            missing = _MISSING.search(str(d.get("message", "")))
            if missing:
                return missing.group(1) if key == "data" else f"{key}.{missing.group(1)}"
            return None if key == "data" else key
    return None


def _no_route(request: Request[Any, Any, Any]) -> BmoError:
    """A 404 that names the path asked for (so the ledger records it) and the usual cause."""
    path = request.scope.get("path", "")
    if path.startswith("/v1/") or path == "/v1":
        return NotFound(f"Not found: no such route or resource ({request.method} {path}).")
    return NotFound(
        f"Not found: no route {request.method} {path}. The base URL must end in /v1 "
        "(e.g. http://127.0.0.1:9000/v1); requests go to /v1/models, /v1/chat/completions."
    )


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = (
        _no_route(request) if isinstance(exc, NotFoundException) else to_bmo_error(exc, _cached_body(request))
    )
    lifecycle = request.scope.get("bmo")  # type: ignore[call-overload]
    if lifecycle is not None:
        lifecycle.note_error(error)
    return Response(
        content=envelope_bytes(error),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )
