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
from app.projections.doorbell import DoorbellListener, socket_path
from app.projections.select import projection_runner, reset_read_models_of

__all__ = ["configured_store_url", "describe_store", "open_store", "rebuild", "run"]

# Under load every commit rings: stepping for each one costs ~190 µs of fixed work (a
# read-model transaction) per step. Steps at most every 5 ms batch the commits instead
# (measured in docs/performance-analysis.md); an idle projector answers a ring at once.
STEP_GAP_S = 0.005
BATCH_HINT = 500  # the runner's batch size: a step that advanced this far may have left more

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
    poll_ms: Annotated[
        int,
        Parameter(
            help="Fallback wait between store polls, in milliseconds: writers ring the projector "
            "after each commit, so this only bounds the lag of a write nobody rang for."
        ),
    ] = 1000,
) -> int:
    """Run the projector until standard input closes (`bmo serve` starts and stops it).

    It sleeps until there is work: on SQLite every writer rings the doorbell
    socket in the data directory after each commit (`app.projections.doorbell`),
    on PostgreSQL every insert NOTIFYs. No traffic, no wake-ups but the slow
    fallback poll.

    Signals to the process group (Ctrl-C, SIGTERM to `bmo serve`) are ignored
    here: the server's workers may still be flushing events then. The parent
    closes our stdin once they are gone (or dies, which closes it too); we
    project what is left and exit, so the read models always end caught up.
    """
    import signal
    import threading
    import time

    data = data_dir(dict(os.environ))
    stop = threading.Event()
    wake = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set(), wake.set()), daemon=True).start()
    bell = None
    listening = threading.Event()  # set: the doorbell thread answers the next ring
    listening.set()
    if _on_sqlite():  # bound before the first step: a commit after it always rings us
        data.mkdir(parents=True, exist_ok=True)
        bell = DoorbellListener(socket_path(data))
        if bell.bound:
            _answer_in_thread(bell, wake, listening)
        else:
            print(
                "bmo projector: another live projector holds the doorbell socket (or it cannot be bound);"
                " polling the store until it can bind",
                file=sys.stderr,
                flush=True,
            )
    opened = _open_until_up(data, ledger_capacity, stop)
    if opened is None:
        return 0
    store, runner = opened
    if hasattr(store, "listen"):  # PostgreSQL: every instance's inserts NOTIFY
        store.listen(("bmo_events",), lambda _channel, _payload: wake.set())
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    poll_s = max(poll_ms, 1) / 1000
    busy_until = 0.0  # after a step that found work: rings before this wait, so commits batch up
    while not stop.is_set():
        wake.clear()
        if (pause := busy_until - time.monotonic()) > 0:
            stop.wait(pause)
        if bell is not None:
            if not bell.bound and bell.rebind():  # the projector that held it has exited
                _answer_in_thread(bell, wake, listening)
            bell.drain()  # rang before this step: the step reads what they rang for
            listening.set()  # a ring from now on may be for a commit this step misses
        try:
            before = runner.position
            if runner.step():
                busy_until = time.monotonic() + STEP_GAP_S
                if runner.position - before >= BATCH_HINT:
                    continue  # a full batch: more is waiting, no sleep while behind
        except Exception as exc:  # keep projecting; readiness shows the lag
            print(f"bmo projector: step failed: {exc}", file=sys.stderr, flush=True)
        wake.wait(poll_s)
    runner.catch_up()
    runner.close()
    store.close()
    if bell is not None:
        bell.close()
    return 0


def _on_sqlite() -> bool:
    try:
        return not configured_store_url()
    except StoreUrlError:  # opening the store reports it
        return False


def _answer_in_thread(bell: DoorbellListener, wake: Any, listening: Any) -> None:
    import threading

    threading.Thread(target=_answer_rings, args=(bell, wake, listening), name="doorbell", daemon=True).start()


def _answer_rings(bell: DoorbellListener, wake: Any, listening: Any) -> None:
    """The doorbell thread: blocked in `select` until a writer rings, then wakes the loop.

    After one ring it stops listening until the loop is about to step again (the loop
    drains what rang meanwhile itself, then sets `listening`): rings during a step or the
    pause between steps queue in the socket and wake nobody, so a busy projector is woken
    once per step, not once per commit, and a writer's ring costs it no wake-up.
    """
    while bell.bound:
        listening.wait()
        try:
            if bell.wait(None):
                listening.clear()
                wake.set()
        except (OSError, ValueError):  # closed at exit
            return
