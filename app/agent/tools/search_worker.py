"""The `search` tool's matching, run as a script in a child process.

Python's `re` backtracks: a pattern like `(a+)+$` takes exponential time on a
line of `a`s, and a thread running it cannot be stopped. So the walk and the
matching run here, in a process of their own, which the tool kills at its
deadline; the server's event loop and threads are never involved.

Standard library only, and run by path (`python -I -S search_worker.py REQUEST`),
so it starts fast and imports nothing of bmo. REQUEST is a JSON object; the
answer is one JSON object on stdout: {"ok": bool, "content": str}.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv"})
MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_CHARS = 200
MAX_OUTPUT_CHARS = 64 * 1024
_SNIFF_BYTES = 8192


class _Counts:
    def __init__(self) -> None:
        self.oversized = 0


def search(root: Path, target: Path, pattern: str, limit: int) -> tuple[bool, str]:
    try:
        regex = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return False, f"search: invalid regex {pattern!r}: {exc}"
    lines: list[str] = []
    size = 0
    counts = _Counts()
    note = ""
    for file in _candidate_files(root, target):
        for lineno, line in _matching_lines(file, regex, counts):
            if len(lines) == limit:
                note = f"[results capped at {limit}; narrow the pattern or path]"
                break
            entry = f"{file.relative_to(root).as_posix()}:{lineno}: {line[:MAX_LINE_CHARS]}"
            if size + len(entry) + 1 > MAX_OUTPUT_CHARS:
                note = (
                    f"[output capped at {MAX_OUTPUT_CHARS} characters after {len(lines)} results; narrow it]"
                )
                break
            lines.append(entry)
            size += len(entry) + 1
        if note:
            break
    if counts.oversized:
        lines.append(f"[{counts.oversized} file(s) over {MAX_FILE_BYTES} bytes skipped]")
    if note:
        lines.append(note)
    if not lines:
        return True, f"no matches for {pattern!r}"
    if not any(not line.startswith("[") for line in lines):
        lines.insert(0, f"no matches for {pattern!r}")
    return True, "\n".join(lines)


def _candidate_files(root: Path, target: Path) -> Iterator[Path]:
    if target.is_file():
        yield target
        return
    # Sorted walk so results are stable; linked directories are not followed.
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() and not _link_stays_inside(path, root):
                continue  # a link pointing out of the workspace, or a loop
            yield path


def _link_stays_inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve(strict=False).is_relative_to(root)
    except (RuntimeError, OSError):  # a symlink loop resolves to nothing
        return False


def _matching_lines(file: Path, regex: re.Pattern[str], counts: _Counts) -> Iterator[tuple[int, str]]:
    text = _read_searchable(file, counts)
    if text is None:
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if regex.search(line):
            yield lineno, line


def _read_searchable(file: Path, counts: _Counts) -> str | None:
    """The file's text, or None for binary, oversized or unreadable files."""
    try:
        if not file.is_file():
            return None
        if file.stat().st_size > MAX_FILE_BYTES:
            counts.oversized += 1
            return None
        data = file.read_bytes()
    except OSError:
        return None
    if b"\x00" in data[:_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def main() -> None:
    request = json.loads(sys.argv[1])
    ok, content = search(Path(request["root"]), Path(request["target"]), request["pattern"], request["limit"])
    sys.stdout.write(json.dumps({"ok": ok, "content": content}))


if __name__ == "__main__":
    main()
