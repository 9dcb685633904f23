"""One small error tree. Every failure a client can see is one of these.

Each class fixes the HTTP status and the OpenAI envelope `type`; instances
carry the message, the offending `param` and a machine `code`. The mapping
to HTTP lives in one place (`app.http.errors`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.outcomes import Outcome

__all__ = [
    "BmoError",
    "ClientGone",
    "Conflict",
    "HeadersTooLarge",
    "InternalError",
    "Interrupted",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PersistFailed",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ServiceUnavailable",
    "SessionBusy",
    "SessionQueueFull",
    "Unauthorized",
    "UnsupportedMediaType",
]


class BmoError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.extra = extra or {}
        self.headers = headers or {}
        self.outcome = outcome  # the ledger outcome, when the status alone does not say it

    @property
    def ledger_error(self) -> str:
        """What the run's terminal event records as its error (the client's message, unless a reason)."""
        return self.message


class InvalidRequest(BmoError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(BmoError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(BmoError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class MethodNotAllowed(BmoError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(BmoError):
    status = 409
    type = "conflict_error"


class SessionBusy(BmoError):
    """The session runs another request; this one was queued (SPEC §7)."""

    status = 409
    type = "session_busy"
    default_code = "queued"


class PayloadTooLarge(BmoError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(BmoError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class HeadersTooLarge(BmoError):
    status = 431
    type = "invalid_request_error"
    default_code = "headers_too_large"


class ClientGone(BmoError):
    """The client disconnected before its answer (nginx's 499; nobody reads the body)."""

    status = 499
    type = "invalid_request_error"
    default_code = "client_disconnected"


class RateLimited(BmoError):
    status = 429
    type = "rate_limit_error"


class SessionQueueFull(RateLimited):
    """The session already has `max_queue_depth` runs waiting: retry once one has started."""

    default_code = "session_queue_full"
    RETRY_AFTER_S: ClassVar[str] = "2"

    def __init__(self, session_id: str, queued: int, max_queue_depth: int) -> None:
        super().__init__(
            f"session '{session_id}' already has {queued} queued run(s) "
            f"(max_queue_depth = {max_queue_depth}). Retry later.",
            headers={"Retry-After": self.RETRY_AFTER_S},
        )


class InternalError(BmoError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


class ProviderError(BmoError):
    """The upstream model failed in a way the client cannot fix."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class ServiceUnavailable(BmoError):
    status = 503
    type = "server_error"
    default_code = "unavailable"


class PersistFailed(ServiceUnavailable):
    """A durable append could not be saved: the store is failing right now (disk full, locked).

    Raised by the event writer to the caller that waits on the save; nothing was
    recorded, so the client may simply retry.
    """

    default_code = "store_unavailable"

    def __init__(self, reason: str | None) -> None:
        super().__init__(f"The event store cannot record this request right now ({reason}); retry shortly.")
        self.reason = reason


class Interrupted(ServiceUnavailable):
    """The shutdown deadline passed with this run in flight; recorded as recovery records it."""

    default_code = "server_shutting_down"
    REASON: ClassVar[str] = "interrupted"

    def __init__(self, message: str) -> None:
        super().__init__(message, outcome="error_500")

    @property
    def ledger_error(self) -> str:
        return self.REASON


class ProviderTimeout(BmoError):
    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"
