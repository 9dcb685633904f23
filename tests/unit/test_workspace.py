"""resolve_in_workspace: every way out of the workspace is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.agent.tools.base import ToolError
from app.agent.tools.workspace import display_path, resolve_in_workspace


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.py").write_text("x = 1\n")
    return ws.resolve()


def test_relative_path_resolves_inside(root: Path) -> None:
    assert resolve_in_workspace(root, "src/a.py") == root / "src" / "a.py"


def test_dot_and_empty_are_the_root(root: Path) -> None:
    assert resolve_in_workspace(root, ".") == root
    assert resolve_in_workspace(root, "") == root


def test_inner_dotdot_that_stays_inside_is_fine(root: Path) -> None:
    assert resolve_in_workspace(root, "src/../src/a.py") == root / "src" / "a.py"


def test_missing_file_inside_is_allowed(root: Path) -> None:
    assert resolve_in_workspace(root, "new/file.txt") == root / "new" / "file.txt"


def test_absolute_path_inside_is_allowed(root: Path) -> None:
    assert resolve_in_workspace(root, str(root / "src")) == root / "src"


@pytest.mark.parametrize("path", ["..", "../x", "src/../../x", "/etc/passwd"])
def test_escapes_are_refused(root: Path, path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        resolve_in_workspace(root, path)


def test_symlink_pointing_outside_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "link.txt")
    with pytest.raises(ToolError, match="outside the workspace"):
        resolve_in_workspace(root, "link.txt")


def test_symlinked_directory_pointing_outside_is_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, root / "up")
    with pytest.raises(ToolError, match="outside"):
        resolve_in_workspace(root, "up/secret.txt")


def test_symlink_inside_is_followed(root: Path) -> None:
    os.symlink(root / "src" / "a.py", root / "alias.py")
    assert resolve_in_workspace(root, "alias.py") == root / "src" / "a.py"


def test_nul_byte_is_refused(root: Path) -> None:
    with pytest.raises(ToolError, match="NUL"):
        resolve_in_workspace(root, "src/a.py\x00.txt")


def test_workspace_given_unresolved_still_works(root: Path) -> None:
    unresolved = root / "src" / ".."
    assert resolve_in_workspace(unresolved, "src") == root / "src"


def test_display_path_is_relative_posix(root: Path) -> None:
    assert display_path(root, root / "src" / "a.py") == "src/a.py"
    assert display_path(root, root) == "."
