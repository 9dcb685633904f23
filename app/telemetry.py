"""Records: JSON lines on stderr and in `$BMO_GLOBAL_DATA/logs/bmo.jsonl`.

This is the one telemetry seam. Records mirror the `openai_compat.*` slog
records of SPEC §11; OpenTelemetry spans hang off the same calls (a tracer
can be plugged in here without touching callers).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

__all__ = ["WARN_OUTCOMES", "Records", "log_path", "outcome_level"]

WARN_OUTCOMES = frozenset({"recovery_failed", "k8s_retry_failed", "persist_failed", "error_500"})
_encode = msgspec.json.Encoder().encode


def log_path(data_dir: Path) -> Path:
    return data_dir / "logs" / "bmo.jsonl"


def outcome_level(outcome: str) -> str:
    return "warn" if outcome in WARN_OUTCOMES else "info"


class Records:
    """Writes one JSON object per line; whole lines, so workers can share the file."""

    def __init__(self, path: Path | None, *, stderr: IO[str] | None = None) -> None:
        self._stderr = stderr if stderr is not None else sys.stderr
        self._fd: int | None = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(self, level: str, msg: str, **fields: Any) -> None:
        record = {"time": _now(), "level": level, "msg": msg, **fields}
        line = _encode(record) + b"\n"
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line)  # one write per line: O_APPEND keeps lines whole
            try:
                self._stderr.write(line.decode())
                self._stderr.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must never fail a request

    def fired(self, **fields: Any) -> None:
        self.emit("info", "openai_compat.fired", **fields)

    def action(self, *, outcome: str, terminal: bool, **fields: Any) -> None:
        self.emit(
            outcome_level(outcome), "openai_compat.action", outcome=outcome, terminal=terminal, **fields
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def monotonic_ms() -> float:
    return time.perf_counter() * 1000.0
