"""The mutation score per package from mutmut's last run (scripts/mutation prints it).

Reads `mutmut results --all true` (one "name: status" line per mutant). Killed counts mutmut's
timeouts (a mutant that hangs the tests is noticed). Mutants no in-process test reaches ("no
tests") and those not run are reported apart and left out of the score. Survivors listed in
docs/mutation-survivors.txt with a reason are counted as justified.
"""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

SEP = " -- why: "  # as in tests/mutation/survivors.py

PACKAGES = (
    "app.events.writer",
    "app.events",
    "app.commands",
    "app.projections",
    "app.agent.sessions",
    "app.agent.permissions",
)
KILLED = {"killed", "timeout"}


def package_of(name: str) -> str:
    """The first package prefix a mutant name starts with (the writer apart from the rest of events)."""
    return next((p for p in PACKAGES if name.startswith(p + ".")), "other")


def justified(path: pathlib.Path) -> set[str]:
    """Mutant names listed in the survivors file with a reason (name, diff, then ` -- why: reason`)."""
    if not path.exists():
        return set()
    return {
        line.split()[0]
        for line in path.read_text().splitlines()
        if line and not line.startswith("#") and SEP in line
    }


def main() -> None:
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    ok = justified(pathlib.Path("docs/mutation-survivors.txt"))
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        status = "killed" if status in KILLED else status
        if status == "survived" and name in ok:
            status = "justified"
        table[package_of(name)][status] += 1
    print(f"{'package':24} killed justified survived no-tests other  killed%  +justified%")
    total: collections.Counter[str] = collections.Counter()
    for pkg in [*PACKAGES, "other"]:
        c = table.get(pkg)
        if not c:
            continue
        total += c
        _row(pkg, c)
    _row("all", total)


def _row(pkg: str, c: collections.Counter[str]) -> None:
    run = c["killed"] + c["justified"] + c["survived"]
    other = sum(v for k, v in c.items() if k not in {"killed", "justified", "survived", "no tests"})
    pct = 100 * c["killed"] / run if run else 0.0
    pct_j = 100 * (c["killed"] + c["justified"]) / run if run else 0.0
    print(
        f"{pkg:24} {c['killed']:6} {c['justified']:9} {c['survived']:8} {c['no tests']:8} {other:5}"
        f"  {pct:6.1f}  {pct_j:6.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
