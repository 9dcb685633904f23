"""The event store on PostgreSQL: eventsourcing's postgres module, psycopg 3 pooled.

Chosen by `[options.store] url = "postgresql://..."` or `BMO_STORE_URL`; several
bmo instances then share one history. What makes that safe is eventsourcing's:
optimistic concurrency on each stream (one run per session across instances),
notification ids committed in order (the recorder locks the events table for
each insert, so a reader never passes a gap that fills later), and a `NOTIFY`
on every insert, which `listen` turns into wake-ups in every other instance.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

from app.events.store import EventStore, _BmoApplication

__all__ = ["EVENTS_CHANNEL", "EVENTS_TABLE", "PostgresEventStore", "is_postgres_url", "redact_url"]

log = logging.getLogger(__name__)

EVENTS_TABLE = "bmo_events"  # eventsourcing names it "<application name>_events"
EVENTS_CHANNEL = EVENTS_TABLE  # ... and NOTIFYs a channel of the same name on every insert
_SCHEMA_LOCK = zlib.crc32(b"bmo schema")  # an advisory lock key: creating tables is serialised
Listener = Callable[[str, str], None]  # (channel, payload), called on the listener thread


# A server that went away without closing its sockets (a network cut, a host gone) would
# leave connections waiting on the kernel for many minutes: a save, a lease renewal or a
# read would hang instead of failing over to the outbox. These make libpq give up within
# seconds: on connecting, on unacknowledged writes, and on a silent idle connection.
CONNECTION_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 2,
    "tcp_user_timeout": 5000,  # ms
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}


# Liveness: each instance holds a lease it renews; each open run has an owner row,
# written in the same transaction as the run's own events (see _OwningRecorder).
LIVENESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS bmo_instances (
    instance_id TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS bmo_run_owners (
    run_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bmo_run_owners_instance ON bmo_run_owners (instance_id);
"""
_RUN_TOPIC = "app.events.run:"
_CLAIMS = (_RUN_TOPIC + "Fired", _RUN_TOPIC + "Started")  # who fired or started a run owns it
_ENDS = _RUN_TOPIC + "Finished"


class _OwningRecorder(PostgresApplicationRecorder):
    """Records run ownership inside the events' own transaction: no run without an owner.

    `_insert_events` is eventsourcing's hook for writes that must commit with the
    events (its process recorder writes tracking there).
    """

    instance_id = ""  # set per store object once constructed

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        """Before eventsourcing's own init: it opens the pool, whose first connections
        must already carry the timeouts."""
        datastore.pool.kwargs.update(CONNECTION_TIMEOUTS)
        # psycopg_pool retries a lost connection with doubling delays for 5 minutes: after a
        # server restart the pool could stay short for a minute. Giving up after a few
        # seconds lets the pool grow again on demand, starting from a 1 s delay.
        datastore.pool.reconnect_timeout = 5.0
        super().__init__(datastore, **kwargs)

    def insert_events(self, stored_events: Any, **kwargs: Any) -> Any:
        """One attempt. eventsourcing retries ten times, each waiting for a connection:
        the writer would block for most of a minute while the server is away, with
        nothing degraded in posture and session turns waiting instead of a prompt 503.
        The writer's own outbox retries instead, with backoff, and says so."""
        return PostgresApplicationRecorder.insert_events.__wrapped__(self, stored_events, **kwargs)

    def _insert_events(self, curs: Any, stored_events: Any, **kwargs: Any) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        for event in stored_events:
            _own(curs, event, self.instance_id)


def _own(curs: Any, event: StoredEvent, instance_id: str) -> None:
    run_id = UUID(str(event.originator_id)).hex
    if event.topic == _ENDS:
        curs.execute("DELETE FROM bmo_run_owners WHERE run_id = %s", (run_id,))
    elif event.topic in _CLAIMS and instance_id:
        curs.execute(
            "INSERT INTO bmo_run_owners (run_id, instance_id) VALUES (%s, %s) "
            "ON CONFLICT (run_id) DO UPDATE SET instance_id = excluded.instance_id",
            (run_id, instance_id),
        )


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password (for banners, logs and errors)."""
    params = conninfo_to_dict(url)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"postgresql://{params.get('user') or ''}@{host}:{port}/{params.get('dbname') or ''}"


def _environment(url: str) -> dict[str, str]:
    params = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname") or params.get("user") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "localhost"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_CONNECT_TIMEOUT": "2",  # also the wait for a pooled connection: fail fast, outbox retries
        "POSTGRES_POOL_SIZE": "2",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_PRE_PING": "y",  # a restarted server leaves dead connections in the pool
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "no",  # created below, under a lock: instances may start together
        "APPLICATION_RECORDER_TOPIC": "app.events.postgres_store:_OwningRecorder",
    }


class PostgresEventStore(EventStore):
    """The same facade as the SQLite store, plus `listen` for cross-instance wake-ups."""

    def __init__(self, url: str, instance_id: str = "") -> None:
        self.url = url
        self.path = None  # type: ignore[assignment]  # no file: the history lives in the server
        self.instance_id = instance_id
        self._app = _BmoApplication(env=_environment(url))
        self._app.recorder.instance_id = instance_id  # type: ignore[attr-defined]
        with schema_lock(url) as conn:
            conn.execute(LIVENESS_SCHEMA)
            self._app.recorder.create_table()  # type: ignore[attr-defined]
        self._listeners: list[tuple[tuple[str, ...], Listener]] = []
        self._listening: threading.Thread | None = None
        self._closed = threading.Event()

    def save(self, events: Sequence[DomainEvent]) -> int:
        """Through eventsourcing's recorder: this one also records each run's owner."""
        return self._put(events)

    def streams_with(self, topic: str) -> list[UUID]:
        with self._cursor() as cur:
            query = SQL("SELECT DISTINCT originator_id FROM {} WHERE topic = %s")
            cur.execute(query.format(Identifier(EVENTS_TABLE)), (topic,))
            return [UUID(str(row["originator_id"])) for row in cur.fetchall()]

    def check_writable(self) -> None:
        """Raise if the server cannot take a write right now (down, read-only, or locked)."""
        with self._datastore().transaction(commit=False) as cur:
            cur.execute("SET LOCAL lock_timeout = '500ms'")
            cur.execute(SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(Identifier(EVENTS_TABLE)))

    def hold_lease(self, addr: str, lease_s: float) -> None:
        """Take or renew this instance's lease (the server's clock: no skew between hosts)."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO bmo_instances (instance_id, addr, expires_at) "
                "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (instance_id) DO UPDATE "
                "SET heartbeat_at = now(), expires_at = excluded.expires_at",
                (self.instance_id, addr, lease_s),
            )

    def abandoned_runs(self) -> list[str]:
        """Open runs whose owner's lease has expired (or whose owner never held one); never
        this instance's own (it is alive, whatever its lease row says after an outage)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT o.run_id FROM bmo_run_owners o LEFT JOIN bmo_instances i USING (instance_id) "
                "WHERE (i.instance_id IS NULL OR i.expires_at < now()) AND o.instance_id <> %s "
                "ORDER BY o.run_id",
                (self.instance_id,),
            )
            return [row["run_id"] for row in cur.fetchall()]

    def instances(self) -> list[dict[str, Any]]:
        """Every instance that ever held a lease here, with `live` from the server's clock."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT instance_id, addr, started_at, heartbeat_at, expires_at, expires_at >= now() AS live "
                "FROM bmo_instances ORDER BY started_at"
            )
            return [dict(row) for row in cur.fetchall()]

    def listen(self, channels: tuple[str, ...], callback: Listener) -> None:
        """Call `callback(channel, payload)` on each NOTIFY (and once after each reconnect)."""
        self._listeners.append((channels, callback))
        if self._listening is None:
            self._listening = threading.Thread(target=self._listen_loop, name="pg-listen", daemon=True)
            self._listening.start()

    def close(self) -> None:
        self._closed.set()
        super().close()

    def _datastore(self) -> Any:
        return self._app.recorder.datastore  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._datastore().get_connection() as conn, conn.cursor() as cur:
            yield cur

    def _listen_loop(self) -> None:
        """One dedicated connection; reconnects with backoff while the server is away."""
        backoff = 0.1
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **CONNECTION_TIMEOUTS) as conn:
                    for channel in {c for channels, _ in self._listeners for c in channels}:
                        conn.execute(SQL("LISTEN {}").format(Identifier(channel)))
                    backoff = 0.1
                    self._dispatch("", "")  # (re)connected: anything may have been missed
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                log.warning("postgres listener: %s (reconnecting)", exc)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, channel: str, payload: str) -> None:
        for channels, callback in list(self._listeners):
            if not channel or channel in channels:
                try:
                    callback(channel, payload)
                except Exception:  # a listener's bug must not stop the others' wake-ups
                    log.exception("postgres listener callback failed")


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[psycopg.Connection[Any]]:
    """Serialise `CREATE ... IF NOT EXISTS` across instances (concurrent ones can collide)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
