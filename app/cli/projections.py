"""`bmo projections rebuild`: drop the read models and replay every event."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from app.config import ConfigError, data_dir, load_settings
from app.events.location import StoreUrlError, store_url
from app.events.select import open_event_store
from app.events.store import EventStore
from app.projections.db import read_db_path
from app.projections.select import projection_runner, reset_read_models_of

__all__ = ["configured_store_url", "describe_store", "open_store", "rebuild", "run"]

LedgerCapacity = Annotated[
    int,
    Parameter(
        help="How many runs the ledger keeps (newest first); match options.openai_compat.ledger_capacity."
    ),
]


def configured_store_url() -> str:
    """The store `bmo serve` would use here: `BMO_STORE_URL`, else the config, else "" (SQLite)."""
    env = dict(os.environ)
    try:
        settings = load_settings(cwd=Path.cwd(), env=env)
    except ConfigError:
        settings = None  # the URL may still come from the environment
    return store_url(settings, env)


def describe_store(data: Path) -> tuple[str, str]:
    """(event store, read models) as an operator should read them: paths, or the server."""
    try:
        url = configured_store_url()
    except StoreUrlError as exc:
        return f"(unusable: {exc})", "-"
    if not url:
        return str(data / "events.db"), str(read_db_path(data))
    from app.events.postgres_store import redact_url

    return redact_url(url), f"{redact_url(url)} (beside the events)"


def open_store(data: Path) -> EventStore:
    """The store `bmo serve` would use here (`BMO_STORE_URL`, else the config, else SQLite)."""
    return open_event_store(data, url=configured_store_url())


def rebuild(*, ledger_capacity: LedgerCapacity = 10_000) -> int:
    """Rebuild every read model from the event store (safe while no server runs)."""
    data = data_dir(dict(os.environ))
    store = open_store(data)
    reset_read_models_of(store, read_db_path(data))
    runner = projection_runner(store, read_db_path(data), ledger_capacity=ledger_capacity)
    position = runner.catch_up()
    runner.close()
    store.close()
    print(f"read models rebuilt from {position} events in {_where(store, data)}")
    return 0


def _where(store: EventStore, data: Path) -> str:
    url = getattr(store, "url", "")
    if not url:
        return str(data / "events.db")
    from app.events.postgres_store import redact_url

    return redact_url(url)


def _open_until_up(data: Path, capacity: int, stop: Any) -> tuple[EventStore, Any] | None:
    """The store and a runner; a PostgreSQL server that is away at start is waited for."""
    backoff = 0.1
    while not stop.is_set():
        try:
            store = open_store(data)
        except Exception as exc:  # the server is restarting or unreachable: readiness shows the lag
            print(f"bmo projector: store unavailable: {exc}", file=sys.stderr, flush=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
            continue
        try:
            return store, projection_runner(store, read_db_path(data), ledger_capacity=capacity)
        except Exception as exc:
            store.close()
            print(f"bmo projector: store unavailable: {exc}", file=sys.stderr, flush=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)
    return None


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
    stop = threading.Event()
    wake = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set(), wake.set()), daemon=True).start()
    opened = _open_until_up(data, ledger_capacity, stop)
    if opened is None:
        return 0
    store, runner = opened
    poll_s = poll_ms / 1000
    if hasattr(store, "listen"):  # PostgreSQL: every instance's inserts NOTIFY; poll only as a fallback
        store.listen(("bmo_events",), lambda _channel, _payload: wake.set())
        poll_s = 1.0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not stop.is_set():
        wake.clear()
        try:
            if runner.step():
                continue  # more may be waiting: no sleep while behind
        except Exception as exc:  # keep projecting; readiness shows the lag
            print(f"bmo projector: step failed: {exc}", file=sys.stderr, flush=True)
        wake.wait(poll_s)
    runner.catch_up()
    runner.close()
    store.close()
    return 0
