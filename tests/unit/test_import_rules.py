"""Who may import whom: the rules of docs/architecture.md, checked on the code's own imports.

Read from the source with `ast` (every import, at module level or inside a function), so
a violation fails here in the default suite, whatever the module does at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

# Where the event store may be imported (the store, or the factory that opens one):
# the write path, the projector, the entry points.
STORES = ("app.events.store", "app.events.select", "app.events.postgres_store")
STORE_ALLOWED = ("app/events/", "app/commands/", "app/projections/", "app/bootstrap.py", "app/cli/")
# Known exceptions, each with its reason; the test fails when one is no longer needed.
STORE_EXCEPTIONS: dict[str, str] = {}

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
    return any(_within(m, store) for m in imported_modules(source) for store in STORES)


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
    assert offenders == [], f"these import {STORES}; read through Executor.events instead: {offenders}"


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
        "def later():\n    from app.events.select import open_event_store\n",
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


def module_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the app modules it imports (anywhere in it, lazily too).

    `from pkg import name` is an edge to `pkg.name` when that is a module, else to
    `pkg`; relative imports are resolved. Parent packages are not edges (every
    import runs them first: that is not a cycle a module can avoid).
    """
    names = {_module_name(path): path for path in files}
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(files[path])):
            if isinstance(node, ast.Import):
                targets.update(_nearest(alias.name, names) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in names else _nearest(base, names))
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _nearest(name: str, modules: dict[str, str]) -> str:
    """The app module `name` is, or lies in ("" for anything outside app)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round about (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle_inside_app() -> None:
    cycles = import_cycles(module_graph(_app_files()))
    assert cycles == [], f"these modules import each other (a lazy import counts too): {cycles}"


def test_the_cycle_check_sees_lazy_and_round_about_cycles() -> None:
    files = {
        "app/a.py": "from app.b import x\n",
        "app/b.py": "def later():\n    from app.c import y\n",
        "app/c.py": "import app.a\n",
        "app/pkg/__init__.py": "from app.pkg.d import z\n",
        "app/pkg/d.py": "from app.pkg import e\n",  # a sibling module, not the package
        "app/pkg/e.py": "from . import d\n",
    }
    assert import_cycles(module_graph(files)) == [["app.a", "app.b", "app.c"], ["app.pkg.d", "app.pkg.e"]]
    files["app/c.py"] = files["app/pkg/e.py"] = "import json\n"
    assert import_cycles(module_graph(files)) == []
