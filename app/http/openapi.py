"""OpenAPI declarations shared by the controllers (documentation only).

Nothing here changes a response: it makes `/schema/openapi.json` say what the
server really does: bearer auth on every compat route, the OpenAI error
envelope for every error status, `X-Request-Id` on every response and the
`text/event-stream` alternative of the streaming routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from app.http.wire import ErrorEnvelope

__all__ = ["COMPONENTS", "SECURITY", "Documented", "DocumentedStream", "errors"]

SECURITY: list[SecurityRequirement] = [{"bearer": []}]
COMPONENTS = Components(
    security_schemes={
        "bearer": SecurityScheme(
            type="http",
            scheme="bearer",
            description="`Authorization: Bearer <token>` (`bmo serve --auth-token`); "
            "not needed by /healthz and /readyz.",
        )
    }
)

_ERRORS = {
    400: "invalid request: malformed JSON, a field of the wrong type or value",
    401: "missing or wrong bearer token",
    404: "not found",
    409: "conflict",
    413: "request body over 4 MiB",
    429: "rate limited",
    500: "a bug: generic message, details only in the server log",
    502: "the upstream model provider failed",
    503: "unavailable: the event store cannot record the request",
    504: "the upstream model provider timed out",
}

_REQUEST_ID = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING, pattern="^[0-9a-f]{32}$"),
    description="The request id: also the run id in the ledger and in the records.",
    required=True,
)

# One server-sent event (OpenAPI before 3.2: the media type schema describes each event).
_SSE_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    required=["data"],
    properties={
        "data": Schema(
            type=OpenAPIType.STRING,
            description="One JSON object per event (a `chat.completion.chunk`, a run event row, "
            'or `{"error": {...}}` after a failure), then `[DONE]`.',
        ),
        "event": Schema(type=OpenAPIType.STRING),
    },
    description="`data: <JSON>` events; `: keep-alive` comments while tools run; `data: [DONE]` last.",
)


def errors(*statuses: int, **descriptions: str) -> dict[int, ResponseSpec]:
    """`ResponseSpec(ErrorEnvelope)` per status; `descriptions` as `s404="..."` override the defaults."""
    return {
        status: ResponseSpec(
            ErrorEnvelope,
            description=descriptions.get(f"s{status}", _ERRORS[status]),
            generate_examples=False,
        )
        for status in statuses
    }


@dataclass
class Documented(Operation):
    """Every response carries `X-Request-Id` (added by the outer ASGI layer)."""

    def __post_init__(self) -> None:
        for response in (self.responses or {}).values():
            if isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "X-Request-Id": _REQUEST_ID}


@dataclass
class DocumentedStream(Documented):
    """A 200 that is JSON, or `text/event-stream` when the client asks for a stream."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                "text/event-stream": OpenAPIMediaType(schema=_SSE_EVENT),
            }
