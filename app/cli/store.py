"""`bmo store copy --to postgresql://...`: move a SQLite history up to PostgreSQL.

Every event is copied as it is stored (same stream ids, versions, topics and
bytes, same notification ids, so the same order), the read models are rebuilt
by replay on the target, and the copy is verified by counting both sides. Runs
that were open in the SQLite history (a crash) are handed to no instance, so the
first instance to serve on the target closes them as `interrupted`. Run it with
no server on either store.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from app.config import data_dir

__all__ = ["copy"]

BATCH = 2000
COPIED_OWNER = "copied-from-sqlite"  # an owner that never holds a lease


def copy(
    *,
    to: Annotated[str, Parameter(help="The target: a postgresql:// URL.")],
    replace: Annotated[
        bool, Parameter(help="Delete bmo's tables on the target first (it refuses a non-empty one).")
    ] = False,
    ledger_capacity: Annotated[int, Parameter(help="Ledger rows kept by the rebuilt read models.")] = 10_000,
) -> int:
    """Copy the SQLite event store under the data dir into PostgreSQL."""
    from app.events.location import StoreUrlError, store_url
    from app.events.postgres_store import redact_url

    data = data_dir(dict(os.environ))
    source_path = data / "events.db"
    try:
        url = store_url(None, {"BMO_STORE_URL": to})
    except StoreUrlError as exc:
        return _fail(str(exc).replace("BMO_STORE_URL", "--to"))
    if not url:
        return _fail("--to must be a postgresql:// URL")
    if not source_path.exists():
        return _fail(f"no event store at {source_path} (set BMO_GLOBAL_DATA to the data dir to copy)")
    try:
        return _copy(data, url, replace=replace, capacity=ledger_capacity)
    except _Refused as exc:
        return _fail(str(exc))
    except Exception as exc:  # an unreachable or refusing server: say so, no traceback
        return _fail(f"copy to {redact_url(url)} failed: {type(exc).__name__}: {exc}")


class _Refused(Exception):
    pass


def _fail(message: str) -> int:
    print(f"bmo store copy: {message}", file=sys.stderr)
    return 2


def _copy(data: Path, url: str, *, replace: bool, capacity: int) -> int:
    from app.events.postgres_store import PostgresEventStore, redact_url
    from app.events.select import open_event_store
    from app.projections.pg_runner import PgProjectionRunner

    if replace:
        _drop_target(url)
    source = open_event_store(data)
    target = PostgresEventStore(url)
    try:
        existing = target.max_notification_id()
        if existing:
            raise _Refused(
                f"{redact_url(url)} already holds {existing} events; "
                "pass --replace to delete bmo's tables there first"
            )
        total, head = _count(source), source.max_notification_id()
        print(f"copying {total} events from {data / 'events.db'} to {redact_url(url)}", file=sys.stderr)
        copied = _copy_events(source, url, total)
        runner = PgProjectionRunner(target, ledger_capacity=capacity)
        position = runner.catch_up()
        _hand_open_runs_to_no_one(runner.read_conn)
        runner.close()
        _verify(source, target, url, total, head, position, copied)
    finally:
        source.close()
        target.close()
    print(f"verified: {total} events in both stores, last id {head}; read models rebuilt to {position}")
    return 0


def _count(source: Any) -> int:
    import sqlite3

    with sqlite3.connect(source.path) as conn:
        return conn.execute("SELECT count(*) FROM stored_events").fetchone()[0]


def _copy_events(source: Any, url: str, total: int) -> int:
    """COPY in batches, ids and bytes verbatim; the id sequence moves past the last one."""
    import psycopg

    copied, after = 0, 0
    with psycopg.connect(url) as conn:
        while True:
            notes = source.notifications(after, BATCH)
            if not notes:
                break
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY bmo_events (notification_id, originator_id, originator_version, topic, state) "
                    "FROM STDIN"
                ) as out,
            ):
                for n in notes:
                    out.write_row((n.id, str(n.originator_id), n.originator_version, n.topic, n.state))
            conn.commit()
            copied += len(notes)
            after = notes[-1].id
            print(f"  {copied}/{total} events", file=sys.stderr, flush=True)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('bmo_events', 'notification_id'), "
            "(SELECT COALESCE(max(notification_id), 0) + 1 FROM bmo_events), false)"
        )
        conn.commit()
    return copied


def _hand_open_runs_to_no_one(read_conn: Any) -> None:
    """Open runs get an owner without a lease: the first instance's sweep closes them."""
    rows = read_conn.execute("SELECT request_id FROM openai_compat_runs WHERE ended_seq IS NULL").fetchall()
    for (request_id,) in rows:
        read_conn.execute(
            "INSERT INTO bmo_run_owners (run_id, instance_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (request_id, COPIED_OWNER),
        )
    if rows:
        print(f"  {len(rows)} run(s) were open: the first instance to serve closes them", file=sys.stderr)


def _verify(source: Any, target: Any, url: str, total: int, head: int, position: int, copied: int) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        count, first, last = conn.execute(
            "SELECT count(*), min(notification_id), max(notification_id) FROM bmo_events"
        ).fetchone()
    if (count, last, copied) != (total, head or None, total) or (total and position != head):
        raise _Refused(
            f"verification failed: source {total} events (last id {head}), "
            f"target {count} (ids {first}..{last}), read models at {position}"
        )


def _drop_target(url: str) -> None:
    import psycopg

    from app.projections.pg_db import reset_pg_read_models

    reset_pg_read_models(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bmo_events, bmo_run_owners, bmo_instances")
