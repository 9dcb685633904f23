"""A local OTLP/HTTP collector for the bmo arm, in a process of its own.

It reuses `tests/fakes/otlp_receiver.py` (decodes every export as a collector
would) but only counts spans instead of keeping them, so memory stays flat on
long runs, and it answers HTTP/1.1 with keep-alive: the test receiver speaks
http.server's default HTTP/1.0 and closes the connection after every export,
which would make bmo's exporter open a new TCP connection per batch, a cost a
real OpenTelemetry collector (keep-alive) does not impose on users.

Prints `PORT <n>` once listening; on SIGTERM writes
`{"spans": n, "exports": m, "names": {...}}` to `--out` and exits.

    python -m bench.otlp_sink --out /tmp/otlp.json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main"]


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.exports = 0
        self.names: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"spans": self.spans, "exports": self.exports, "names": dict(self.names)}


def _receiver(counts: _Counts) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fakes.otlp_receiver import OtlpReceiver, decode_request

    receiver = OtlpReceiver()

    def add(body: bytes, meta: dict[str, Any]) -> None:
        spans = decode_request(body)
        with counts.lock:
            counts.exports += 1
            counts.spans += len(spans)
            counts.names.update(s["name"] for s in spans)

    receiver._store.add = add  # count, do not keep
    keep_alive(receiver._server.RequestHandlerClass)
    return receiver


def keep_alive(handler: type[BaseHTTPRequestHandler]) -> None:
    """Answer HTTP/1.1, so a connection serves export after export as a collector's does.

    The handler already sends `Content-Length` on every reply, which is what
    HTTP/1.1 keep-alive needs; only the sink's handler class is changed, the
    tests' receiver keeps its HTTP/1.0 behaviour.
    """
    handler.protocol_version = "HTTP/1.1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    counts = _Counts()
    receiver = _receiver(counts).start()
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"PORT {receiver.port}", flush=True)
    while not stop.wait(1.0):
        args.out.write_text(json.dumps(counts.as_dict()))
    receiver.stop()
    args.out.write_text(json.dumps(counts.as_dict()))


if __name__ == "__main__":
    main()
