"""`bmo projections rebuild`: drop the read models and replay every event."""

from __future__ import annotations

import os
import sys
from typing import Annotated

from cyclopts import Parameter

from app.config import data_dir
from app.events.store import open_event_store
from app.projections.db import read_db_path, reset_read_models
from app.projections.runner import ProjectionRunner

__all__ = ["rebuild", "run"]

LedgerCapacity = Annotated[
    int,
    Parameter(
        help="How many runs the ledger keeps (newest first); match options.openai_compat.ledger_capacity."
    ),
]


def rebuild(*, ledger_capacity: LedgerCapacity = 10_000) -> int:
    """Rebuild every read model from the event store (safe while no server runs)."""
    data = data_dir(dict(os.environ))
    reset_read_models(read_db_path(data))
    store = open_event_store(data)
    runner = ProjectionRunner(store, read_db_path(data), ledger_capacity=ledger_capacity)
    position = runner.catch_up()
    store.close()
    print(f"read models rebuilt from {position} events in {data / 'events.db'}")
    return 0


def run(
    *,
    ledger_capacity: LedgerCapacity = 10_000,
    poll_ms: Annotated[int, Parameter(help="Idle wait between store polls, in milliseconds.")] = 10,
) -> int:
    """Run the projector until standard input closes (`bmo serve` starts and stops it).

    Signals to the process group (Ctrl-C, SIGTERM to `bmo serve`) are ignored
    here: the server's workers may still be flushing events then. The parent
    closes our stdin once they are gone (or dies, which closes it too); we
    project what is left and exit, so the read models always end caught up.
    """
    import signal
    import threading

    data = data_dir(dict(os.environ))
    store = open_event_store(data)
    runner = ProjectionRunner(store, read_db_path(data), ledger_capacity=ledger_capacity)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        try:
            if runner.step():
                continue  # more may be waiting: no sleep while behind
        except Exception as exc:  # keep projecting; readiness shows the lag
            print(f"bmo projector: step failed: {exc}", file=sys.stderr, flush=True)
        stop.wait(poll_ms / 1000)
    runner.catch_up()
    runner.close()
    store.close()
    return 0
