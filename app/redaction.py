"""Redaction of secrets the server knows from text a tool produced.

Tool processes get a scrubbed environment, but a tool can still read a secret
from somewhere else (a config file, another process's environment) and print
it. Every tool result passes through a `Redactor` before it is stored as an
event, streamed to a client or sent to a model, so a plain copy of a known
secret never leaves the tool call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

__all__ = ["MARKER", "MIN_SECRET_CHARS", "Redactor", "looks_secret", "server_secrets"]

MARKER = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter values would blank out ordinary words
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE|SIGNATURE|DSN", re.IGNORECASE
)


def looks_secret(name: str) -> bool:
    """True for an environment variable or header name that usually holds a credential."""
    return bool(_SECRET_NAME.search(name))


def server_secrets(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Every secret this server holds: the auth token, provider keys, secret-looking env values."""
    found: list[str] = []
    if settings.options.http_server.auth_token:
        found.append(settings.options.http_server.auth_token)
    found += [p.api_key for p in settings.providers.values() if p.api_key]
    for server in settings.mcp.values():
        found += [v for k, v in server.env.items() if looks_secret(k)]
        found += [v for k, v in server.headers.items() if looks_secret(k)]
    found += [v for k, v in env.items() if looks_secret(k)]
    return found


class Redactor:
    """Replaces every occurrence of the known secrets with `MARKER`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        # One alternation of escaped literals, longest first: a single pass over the text.
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MARKER, text)
