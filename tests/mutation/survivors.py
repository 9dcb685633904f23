"""Write docs/mutation-survivors.txt from mutmut's last run, keeping the reasons already given.

Run from the repo root after scripts/mutation: python -m tests.mutation.survivors
One line per surviving mutant: its name, the changed line (`- original` / `+ mutant`),
then ` -- why: reason` once a person has read the mutant and judged it equivalent or not
observable. Reasons are kept by mutant name across runs; a survivor without a reason is
unjustified (tests/mutation/score.py counts it as survived).
"""

from __future__ import annotations

import pathlib
import sys

from mutmut.configuration import config  # noqa: F401  (loads [tool.mutmut])
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.utils.file_utils import walk_mutatable_files

OUT = pathlib.Path("docs/mutation-survivors.txt")
SEP = " -- why: "  # between the diff and the reason (a diff may hold a "#" comment)
HEADER = (
    "# Surviving mutants of the last scored run of scripts/mutation (mutmut 3.8.1): name, the changed\n"
    "# line (- original + mutant), then ` -- why: reason` (read one by one: equivalent, or not observable).\n"
    "# Regenerate with python -m tests.mutation.survivors (keeps reasons by name).\n"
)


def reasons(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Mutant name -> (its changed line, the reason given) from the survivors file."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and SEP in line:
                head, reason = line.split(SEP, 1)
                name, _, diff = head.partition("  ")
                out[name.strip()] = (diff.strip(), reason.strip())
    return out


def reason_for(name: str, diff: str, known: dict[str, tuple[str, str]]) -> str | None:
    """The reason given for this mutant. mutmut numbers a function's mutants in order, so once the
    function is edited a name can stand for another change: a reason is kept only with the same
    changed line, found under its old name or another of the same function."""
    old = known.get(name)
    if old is not None and (old[0] == diff or diff.startswith("(diff unavailable")):
        return old[1]
    function = name.rsplit("__mutmut_", 1)[0]
    return next(
        (r for n, (d, r) in known.items() if d == diff and n.rsplit("__mutmut_", 1)[0] == function),
        None,
    )


def changed(diff: str) -> str:
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return " ".join(" ".join(ln.split()) for ln in lines)[:240]


def main() -> None:
    known = reasons(OUT)
    rows = []
    unrun = []  # mutants the last run has no verdict for (stopped early): their reasons are kept apart
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in sorted(data.exit_code_by_key.items()):
            if code is None and name in known:
                unrun.append(f"{name}  {known[name][0]}{SEP}{known[name][1]}")
            if code != 0:  # 0: the tests passed with the mutant in place (survived)
                continue
            try:
                diff = changed(get_diff_for_mutant(name, path=data.path))
            except FileNotFoundError:  # mutants/ being rewritten by a run in progress
                diff = "(diff unavailable: run again once mutmut has finished)"
            reason = reason_for(name, diff, known)
            rows.append(f"{name}  {diff}" + (f"{SEP}{reason}" if reason else ""))
    note = "# Not run by the last run (it was stopped): reasons given earlier, kept."
    kept = [note, *unrun] if unrun else []
    OUT.write_text(HEADER + "\n".join(rows + kept) + "\n")
    print(f"{len(rows)} survivors, {sum(SEP in r for r in rows)} with a reason")


if __name__ == "__main__":
    sys.exit(main())
