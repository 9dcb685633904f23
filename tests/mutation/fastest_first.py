"""A pytest plugin for scripts/mutation: run a mutant's tests fastest first.

mutmut runs, for each mutant, the tests its stats phase saw reach the mutated function,
with `-x`: the first failing test ends the run. It passes them in no particular order, so
a mutant the quickest test kills may first wait for the slowest. Ordering by the durations
mutmut measured (`mutmut-stats.json` in the mutants/ directory it runs from) changes no
verdict and no assertion, only how soon a killed mutant is known. Without that file (the
stats phase itself, or any run outside mutmut) the order is left alone.

Enabled by `-p tests.mutation.fastest_first` in `[tool.mutmut] pytest_add_cli_args`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STATS = Path("mutmut-stats.json")


def durations(path: Path = STATS) -> dict[str, float]:
    """Test node id -> seconds its call took in mutmut's stats phase (empty if not measured)."""
    try:
        return dict(json.loads(path.read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    took = durations()
    if not took:
        return
    # unknown tests (new since the stats phase) last: their cost is not known
    items.sort(key=lambda item: took.get(item.nodeid, float("inf")))
