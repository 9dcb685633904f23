"""The one place errors become HTTP: the OpenAI envelope, never a traceback."""

from __future__ import annotations

import logging
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
from app.events.writer import PersistFailed

__all__ = ["envelope_bytes", "exception_handler", "outcome_for_status", "to_bmo_error"]

log = logging.getLogger(__name__)
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


def outcome_for_status(status: int) -> str:
    if status == 401:
        return "auth_failed"
    if status >= 500:
        return "error_500"
    if status >= 400:
        return "invalid_request"
    return "final_answer"


def to_bmo_error(exc: Exception) -> BmoError:
    if isinstance(exc, BmoError):
        return exc
    if isinstance(exc, PersistFailed):
        return ServiceUnavailable(
            f"The event store cannot record this request right now ({exc}); retry shortly.",
            code="store_unavailable",
        )
    if isinstance(exc, ValidationException):
        return InvalidRequest(_validation_message(exc), param=_validation_param(exc))
    if isinstance(exc, NotFoundException):
        return NotFound("Not found: no such route or resource.")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed("Method not allowed for this route.")
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


def _validation_message(exc: ValidationException) -> str:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = [_detail(d) for d in details if isinstance(d, dict) and d.get("message")]
    if parts:
        return "Invalid request body: " + "; ".join(parts)
    return f"Invalid request body: {exc.detail}"


def _detail(detail: dict[str, Any]) -> str:
    key = detail.get("key")
    return f"{key}: {detail['message']}" if key and key != "data" else str(detail["message"])


def _validation_param(exc: ValidationException) -> str | None:
    details = exc.extra if isinstance(exc.extra, list) else []
    for d in details:
        if isinstance(d, dict) and d.get("key"):
            return str(d["key"])
    return None


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = to_bmo_error(exc)
    lifecycle = request.scope.get("bmo")  # type: ignore[call-overload]
    if lifecycle is not None:
        lifecycle.note_error(error)
    return Response(
        content=envelope_bytes(error),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )
