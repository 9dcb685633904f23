"""Server-sent events framing: one JSON object per `data:` line."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["DONE", "KEEP_ALIVE", "event"]

_encode = msgspec.json.Encoder().encode

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


def event(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"
