"""Route names used in records, counts and the ledger (app.projections.runs.ROUTES lists them)."""

from __future__ import annotations

import re

__all__ = ["UNPROTECTED_PATHS", "is_unprotected", "route_name"]

_SLASHES = re.compile(r"/{2,}")
UNPROTECTED_PATHS = frozenset({"/healthz", "/readyz"})  # probes carry no token
_UNRECORDED_PREFIXES = ("/healthz", "/readyz", "/schema")
_CAPABILITY_PREFIX = "/review/"  # the review page checks its own capability token


def is_unprotected(path: str) -> bool:
    """Probes carry no token; the review page is opened from a browser with a capability link."""
    return path in UNPROTECTED_PATHS or path.startswith(_CAPABILITY_PREFIX)


_EXACT = {
    "/v1/chat/completions": "chat_completions",
    "/v1/models": "models_list",
    "/v1/openai-compat/posture": "posture",
    "/v1/openai-compat/runs": "runs_list",
}


def route_name(path: str) -> str | None:
    """None for paths that are not part of the compat surface (probes, schema).

    Doubled and trailing slashes (`/v1//models`, `/v1/models/`) are served by
    the router, so they are named like the route they reach.
    """
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/")  # served by the router too
    name = _EXACT.get(path)
    if name is not None:
        return name
    if path.startswith("/v1/openai-compat/runs/") and path.endswith("/events"):
        return "run_events_list"
    if path.startswith("/v1/permissions"):
        return "permissions"
    if path.startswith(_CAPABILITY_PREFIX):
        return "permission_review"
    if path.startswith(_UNRECORDED_PREFIXES):
        return None
    return "unmatched"
