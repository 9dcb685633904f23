"""Who may import whom: the rules of docs/architecture.md, checked on the code's own imports.

Read from the source with `ast` (every import, at module level or inside a function), so
a violation fails here in the default suite, whatever the module does at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

# Where the event store may be imported: the write path, the projector, the entry points.
STORE = "app.events.store"
STORE_ALLOWED = ("app/events/", "app/commands/", "app/projections/", "app/bootstrap.py", "app/cli/")
# Known exceptions, each with its reason; the test fails when one is no longer needed.
STORE_EXCEPTIONS = {
    "app/recovery.py": (
        "the startup sweep folds runs and sessions straight from the store before the executor "
        "exists; it moves behind the executor's reader with the PostgreSQL store work"
    ),
}

# The chat route parses and renders; the chat service (app.agent.chat) decides.
CHAT_ROUTE = "app/http/chat.py"
CHAT_SERVICE = "app.agent.chat"


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, `from a.b import c` counted as a.b and a.b.c."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def store_violation(path: str, source: str) -> bool:
    """A module outside the allowed places that imports the event store."""
    if path.startswith(STORE_ALLOWED):
        return False
    return any(_within(m, STORE) for m in imported_modules(source))


def chat_route_violations(source: str) -> list[str]:
    """What the chat route imports beyond the service's entry from agent, commands, events."""
    bad = []
    for module in sorted(imported_modules(source)):
        if _within(module, "app.commands") or _within(module, "app.events"):
            bad.append(module)
        elif _within(module, "app.agent") and module != "app.agent" and not _within(module, CHAT_SERVICE):
            bad.append(module)  # `from app.agent import x` is judged by its app.agent.x
    return bad


def _app_files() -> dict[str, str]:
    root = APP.parent
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(APP.rglob("*.py"))}


def test_only_the_write_path_the_projector_and_entry_points_import_the_event_store() -> None:
    offenders = [
        path
        for path, source in _app_files().items()
        if store_violation(path, source) and path not in STORE_EXCEPTIONS
    ]
    assert offenders == [], f"these import {STORE}; read through Executor.events instead: {offenders}"


def test_every_store_exception_is_still_needed() -> None:
    files = _app_files()
    stale = [path for path in STORE_EXCEPTIONS if not store_violation(path, files.get(path, ""))]
    assert stale == [], f"no longer import the store: drop them from STORE_EXCEPTIONS: {stale}"


def test_the_chat_route_imports_only_the_chat_service() -> None:
    source = (APP.parent / CHAT_ROUTE).read_text()
    assert chat_route_violations(source) == []
    assert any(_within(m, CHAT_SERVICE) for m in imported_modules(source))


@pytest.mark.parametrize(
    "source",
    [
        "from app.events.store import EventStore",
        "import app.events.store",
        "from app.events import store",
        "def later():\n    from app.events.store import open_event_store\n",
    ],
)
def test_the_store_rule_catches_every_import_form(source: str) -> None:
    assert store_violation("app/agent/anything.py", source)
    assert not store_violation("app/commands/execute.py", source)
    assert not store_violation("app/cli/ledger.py", source)


@pytest.mark.parametrize(
    "source",
    [
        "from app.agent.sessions import Admission",
        "from app.agent import router",
        "from app.commands import AppendContent",
        "from app.events.run import Fired",
        "import app.agent.replay",
    ],
)
def test_the_chat_route_rule_catches_agent_internals_commands_and_events(source: str) -> None:
    assert chat_route_violations(source) != []
    assert chat_route_violations("from app.agent.chat import ChatRequest, Reply") == []
