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


def reasons(path: pathlib.Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and SEP in line:
                out[line.split()[0]] = line.split(SEP, 1)[1].strip()
    return out


def changed(diff: str) -> str:
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return " ".join(" ".join(ln.split()) for ln in lines)[:240]


def main() -> None:
    known = reasons(OUT)
    rows = []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in sorted(data.exit_code_by_key.items()):
            if code != 0:  # 0: the tests passed with the mutant in place (survived)
                continue
            try:
                diff = changed(get_diff_for_mutant(name, path=data.path))
            except FileNotFoundError:  # mutants/ being rewritten by a run in progress
                diff = "(diff unavailable: run again once mutmut has finished)"
            reason = known.get(name)
            rows.append(f"{name}  {diff}" + (f"{SEP}{reason}" if reason else ""))
    OUT.write_text(HEADER + "\n".join(rows) + "\n")
    print(f"{len(rows)} survivors, {sum(SEP in r for r in rows)} with a reason")


if __name__ == "__main__":
    sys.exit(main())
