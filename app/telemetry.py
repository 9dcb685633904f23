"""Records: JSON lines on stderr and in `$BMO_GLOBAL_DATA/logs/bmo.jsonl`.

This is the one telemetry seam. Records mirror the `openai_compat.*` slog
records of SPEC §11; OpenTelemetry spans hang off the same calls: `fired`
opens the request span and `action` adds an event or ends it (`app.tracing`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from app.outcomes import Outcome
from app.tracing import Tracing

__all__ = ["WARN_OUTCOMES", "Records", "log_path", "outcome_level"]

WARN_OUTCOMES: frozenset[Outcome] = frozenset(
    {"recovery_failed", "k8s_retry_failed", "persist_failed", "error_500"}
)
_encode = msgspec.json.Encoder().encode


def log_path(data_dir: Path) -> Path:
    return data_dir / "logs" / "bmo.jsonl"


def outcome_level(outcome: str) -> str:
    return "warn" if outcome in WARN_OUTCOMES else "info"


class Records:
    """Writes one JSON object per line; whole lines, so workers can share the file."""

    def __init__(
        self,
        path: Path | None,
        *,
        stderr: IO[str] | None = None,
        tracing: Tracing | None = None,
        flush_every_s: float = 0.05,
    ) -> None:
        self._stderr = stderr if stderr is not None else sys.stderr
        self._tracing = tracing if tracing is not None else Tracing()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flush_every = flush_every_s
        self._wake = threading.Event()  # a record arrived in an empty buffer
        self._hurry = threading.Event()  # the buffer is big, or we are closing: flush now
        self._flusher: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(self, level: str, msg: str, **fields: Any) -> None:
        """Queue one record; a flusher thread writes the batch within `flush_every_s`.

        Two syscalls per record (file and stderr) cost the event loop more than
        the rest of the record path together; batching them keeps lines whole
        (each batch is one `write` of complete lines) and off the hot path.
        Only the first record of a batch wakes the flusher: with no records it
        sleeps without a timer.
        """
        record = {"time": _now(), "level": level, "msg": msg, **fields}
        line = _encode(record) + b"\n"
        with self._lock:
            first = not self._buffer
            self._buffer.append(line)
            self._buffered += len(line)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="records", daemon=True)
                self._flusher.start()
        if first:
            self._wake.set()
        if self._buffered >= 64 * 1024:
            self._hurry.set()

    def flush(self) -> None:
        with self._lock:
            lines, self._buffer, self._buffered = self._buffer, [], 0
            if not lines:
                return
            data = b"".join(lines)
            if self._fd is not None:
                os.write(self._fd, data)  # O_APPEND + whole lines: workers can share the file
            try:
                self._stderr.write(data.decode())
                self._stderr.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must never fail a request

    def _flush_loop(self) -> None:
        """Sleep until a batch starts, let it gather for `flush_every_s` (or until big), write it."""
        while not self._closing:
            self._wake.wait()
            self._wake.clear()
            self._hurry.wait(self._flush_every)
            self._hurry.clear()
            with contextlib.suppress(OSError):  # a full disk must not kill the flusher
                self.flush()

    _closing = False

    @property
    def tracing(self) -> Tracing:
        """The span side of this seam (a no-op one when tracing is off)."""
        return self._tracing

    def fired(self, **fields: Any) -> None:
        self.emit("info", "openai_compat.fired", **fields)
        self._tracing.open_request(fields)

    def action(self, *, outcome: str, terminal: bool, **fields: Any) -> None:
        level = outcome_level(outcome)
        self.emit(level, "openai_compat.action", outcome=outcome, terminal=terminal, **fields)
        self._tracing.action(fields, outcome, terminal, level)

    def close(self) -> None:
        """Close the log file and shut tracing down (bounded: a dead collector costs ~2 s at most)."""
        self._closing = True
        self.flush()
        if self._flusher is not None:
            self._hurry.set()
            self._wake.set()
            self._flusher.join(timeout=1.0)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tracing.shutdown()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def monotonic_ms() -> float:
    return time.perf_counter() * 1000.0
