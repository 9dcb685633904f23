"""Confinement is by path ancestry: a sibling whose name merely starts like the workspace is outside."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.agent.tools.base import ToolError
from app.agent.tools.workspace import resolve_in_workspace


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "ws-evil" / "x").write_text("secret")
    (tmp_path / "wsx").mkdir()
    return tmp_path / "ws"


@pytest.mark.parametrize("path", ["../ws-evil/x", "../ws-evil", "../wsx", "../ws-evil/../ws-evil/x"])
def test_a_sibling_with_the_workspace_as_a_name_prefix_is_outside(ws: Path, path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        resolve_in_workspace(ws, path)


def test_an_absolute_path_into_a_prefix_sibling_is_outside(ws: Path) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        resolve_in_workspace(ws, str(ws.parent / "ws-evil" / "x"))


def test_a_symlink_into_a_prefix_sibling_is_outside(ws: Path) -> None:
    (ws / "link").symlink_to(ws.parent / "ws-evil")
    with pytest.raises(ToolError, match="outside the workspace"):
        resolve_in_workspace(ws, "link/x")


def test_a_name_inside_that_starts_with_dotdot_is_inside(ws: Path) -> None:
    assert resolve_in_workspace(ws, "..ws-evil/x") == ws.resolve() / "..ws-evil" / "x"
