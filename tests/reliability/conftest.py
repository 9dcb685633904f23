"""Fixtures of the reliability suite (`python -m pytest -m reliability tests/reliability`).

`--load-seconds N` (or `BMO_LOAD_SECONDS=N`) shortens the load test (default 60).
Each test records its figures with `figures(name, {...})`; they are printed at the
end of the run and, when `BMO_RELIABILITY_REPORT=/path.json` is set, written there.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import make_server, workspace  # noqa: F401  (fixtures: a real `bmo serve`)

FIGURES: dict[str, dict[str, Any]] = {}
DEFAULT_LOAD_SECONDS = 60.0
WANTED_FDS = 8192  # 500 clients + 500 upstream streams + bmo's own, with room


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--load-seconds",
        type=float,
        default=None,
        help="how long the reliability load test holds its streams (default 60, or BMO_LOAD_SECONDS)",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True)}")
    target = os.environ.get("BMO_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True))


@pytest.fixture
def load_seconds(request: pytest.FixtureRequest) -> float:
    value = request.config.getoption("--load-seconds", default=None)
    if value is None:
        value = float(os.environ.get("BMO_LOAD_SECONDS", DEFAULT_LOAD_SECONDS))
    return max(5.0, float(value))


@pytest.fixture
def figures() -> Callable[[str, dict[str, Any]], None]:
    def record(name: str, values: dict[str, Any]) -> None:
        FIGURES.setdefault(name, {}).update(values)

    return record


@pytest.fixture(scope="session", autouse=True)
def enough_file_descriptors() -> Iterator[None]:
    """Raise the soft fd limit of this process; `bmo serve` children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FDS if hard == resource.RLIM_INFINITY else min(WANTED_FDS, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
