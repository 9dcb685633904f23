"""Keep every tool path inside the workspace root."""

from __future__ import annotations

from pathlib import Path

from app.agent.tools.base import ToolError

__all__ = ["display_path", "resolve_in_workspace"]


def resolve_in_workspace(workspace: Path, path: str) -> Path:
    """Resolve `path` (relative to `workspace`) and refuse anything outside it.

    Symlinks are followed before the check, so a link pointing out of the
    workspace is rejected like `..` or an absolute path elsewhere.
    """
    if not isinstance(path, str):
        raise ToolError(f"path must be a string, got {type(path).__name__}")
    if "\x00" in path:
        raise ToolError("path contains a NUL byte")
    root = workspace.resolve(strict=False)
    try:
        # Joining an absolute path replaces the root, which the check then catches.
        target = (root / path).resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise ToolError(f"cannot resolve path {path!r}: {exc}") from None
    if not target.is_relative_to(root):
        raise ToolError(f"path {path!r} is outside the workspace {str(root)!r}")
    return target


def display_path(workspace: Path, target: Path) -> str:
    """The workspace-relative POSIX form of a resolved path ("." for the root)."""
    rel = target.relative_to(workspace.resolve(strict=False)).as_posix()
    return rel or "."
