"""The tool contract: one module per tool, each a schema plus `run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from app.providers.base import ToolSchema

__all__ = ["Tool", "ToolContext", "ToolError", "ToolResult"]


class ToolError(Exception):
    """A tool refused or failed; the message is shown to the model as-is."""


class ToolResult(msgspec.Struct, frozen=True):
    ok: bool
    content: str  # what the model sees
    # machine-readable failure kind the loop acts on, e.g. "k8s_retry_exhausted",
    # "permission_denied", "timeout", "unavailable"; None when ok or unclassified
    error_kind: str | None = None
    shown: str | None = None  # what a human sees instead of `content` (e.g. a denial's short line)


@dataclass(frozen=True, slots=True)
class ToolContext:
    workspace: Path  # already resolved (absolute, symlinks followed)


class Tool(Protocol):
    schema: ToolSchema
    mutating: bool

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult: ...
