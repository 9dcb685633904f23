"""The issue-19 mutation table: apply each one-line break by hand, run the core guards, revert.

Run from the repo root: python -m tests.mutation.table [name ...]. Every row must say KILLED.
The file is restored even when the run is interrupted (try/finally).
"""

# ruff: noqa: E501  (the mutations are verbatim source lines)
from __future__ import annotations

import pathlib
import subprocess
import sys

M = [
    ("queue order", "app/commands/release_run.py", "run_id=state.queue[0]", "run_id=state.queue[-1]"),
    (
        "content on finished",
        "app/commands/append_content.py",
        "if not state.is_open or not cmd.text:",
        "if not state.fired or not cmd.text:",
    ),
    (
        "question on finished",
        "app/commands/ask_permission.py",
        "if not state.is_open or cmd.question_id",
        "if not state.fired or cmd.question_id",
    ),
    (
        "answer on finished",
        "app/commands/decide_permission.py",
        "if not state.is_open or cmd.question_id not in state.open_questions or not digest_matches(state, cmd):",
        "if cmd.question_id not in state.open_questions or not digest_matches(state, cmd):",
    ),
    (
        "executor re-raise",
        "app/commands/execute.py",
        "                self.forget(stream_id)  # stale: reload and decide again",
        "                raise",
    ),
    (
        "executor bg re-raise",
        "app/commands/execute.py",
        "        self.forget(stream_of(cmd))\n        task =",
        "        return\n        task =",
    ),
    (
        "writer whole batch",
        "app/events/writer.py",
        "        except IntegrityError:\n            await self._save_one_by_one(batch)\n            return True",
        "        except IntegrityError as exc:\n            for s in batch:\n                self._drop(s)\n                s.done.done() or s.done.set_exception(exc)\n            return True",
    ),
    (
        "projector in-memory position",
        "app/projections/runner.py",
        "            position = self._read_position()\n            notes",
        "            position = self.position\n            notes",
    ),
    (
        "tracking after commit",
        "app/projections/runner.py",
        "            if notes:\n                self._between_rows_and_tracking()",
        "            if notes:\n                conn.execute('COMMIT'); conn.execute('BEGIN')\n                self._between_rows_and_tracking()",
    ),
    (
        "outbox newest",
        "app/events/writer.py",
        "oldest = self._pending.pop(0)",
        "oldest = self._pending.pop()",
    ),
    (
        "durable not fast",
        "app/events/writer.py",
        "if submission.durable and now >= submission.deadline:",
        "if False:",
    ),
    (
        "durable ignores wait",
        "app/events/writer.py",
        "if submission.durable and now >= submission.deadline:",
        "if submission.durable:",
    ),
    (
        "decided stays open (evolve)",
        "app/events/run.py",
        "open_questions=state.open_questions - {event.question_id},",
        "open_questions=state.open_questions,",
    ),
    (
        "decided stays open (projection)",
        "app/projections/permissions.py",
        '"status": "allowed" if event.decision == "allow" else "denied",',
        '"status": "pending",',
    ),
    (
        "prefix confinement",
        "app/agent/tools/workspace.py",
        "if not target.is_relative_to(root):",
        "if not str(target).startswith(str(root)):",
    ),
    (
        "prune open runs",
        "app/projections/runs.py",
        'prunable = f"ended_seq IS NOT NULL AND seq <= {cutoff}"',
        'prunable = f"seq <= {cutoff}"',
    ),
    (
        "prune open runs (SQLite)",
        "app/projections/runs.py",
        'prunable = "ended_seq IS NOT NULL AND seq <= ?"',
        'prunable = "seq <= ?"',
    ),
]
tests = ["tests/core", "tests/unit/test_workspace_confinement.py"]


def main() -> None:
    only = sys.argv[1:]
    for name, path, old, new in M:
        if only and name not in only:
            continue
        p = pathlib.Path(path)
        src = p.read_text()
        assert src.count(old) == 1, (name, src.count(old))
        p.write_text(src.replace(old, new))
        try:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-x",
                    "-p",
                    "no:cacheprovider",
                    "--timeout=120",  # above the tests' own 60 s bounds: they fail first, cleanly
                    *tests,
                ],
                capture_output=True,
                text=True,
            )
        finally:
            p.write_text(src)
        last = [
            line
            for line in r.stdout.splitlines()
            if line.startswith("FAILED") or " passed" in line or " failed" in line
        ]
        print(f"{name:35} {'KILLED' if r.returncode else 'SURVIVED'}  {last[:2]}")


if __name__ == "__main__":
    main()
