"""Guards that keep an instance serving while PostgreSQL is away, and honest when it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from app.commands.execute import Executor
from app.events.postgres_store import PostgresEventStore
from app.events.writer import EventWriter
from app.projections.pg_db import PgReadConn
from tests.e2e.server import free_port
from tests.e2e.test_multi_instance import wait_until
from tests.integration.test_store_and_projector import fire_cmd


def test_an_instance_never_sweeps_its_own_runs(postgres_url: str, tmp_path: Path) -> None:
    """After an outage every lease has expired; an instance's own runs are still alive
    (it is the one running them), so only the others may take them for abandoned."""
    mine = PostgresEventStore(postgres_url, instance_id="a" * 32)
    other = PostgresEventStore(postgres_url, instance_id="b" * 32)
    try:
        mine.hold_lease("127.0.0.1:1", 0.01)  # a lease that lapses at once, as in an outage
        other.hold_lease("127.0.0.1:2", 60.0)
        run_id = uuid4()

        async def fire() -> None:
            writer = EventWriter(mine)
            writer.start()
            await Executor(mine, writer).execute(fire_cmd(run_id), durable=True)
            await writer.close()

        asyncio.run(fire())
        wait_until(
            lambda: not next(i for i in mine.instances() if i["instance_id"] == "a" * 32)["live"],
            what="the lease expired",
        )
        assert mine.abandoned_runs() == []
        assert other.abandoned_runs() == [run_id.hex]
    finally:
        mine.close()
        other.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_read_connection_fails_at_once_while_the_server_is_away_and_retries_with_backoff() -> None:
    """Reads run on the event loop's thread: while the server is away, a read must not wait
    for a connection attempt each time."""
    clock = Clock()
    conn = PgReadConn(f"postgresql://postgres@127.0.0.1:{free_port()}/bmo", clock=clock)  # nobody there
    with pytest.raises(psycopg.OperationalError) as first:
        conn.execute("SELECT 1")
    assert "unreachable" not in str(first.value)  # libpq's own error: it tried
    with pytest.raises(psycopg.OperationalError, match="the store is unreachable"):
        conn.execute("SELECT 1")  # within the backoff: no attempt
    clock.now += 0.5
    with pytest.raises(psycopg.OperationalError) as retried:
        conn.execute("SELECT 1")
    assert "unreachable" not in str(retried.value)  # the retry was due: it tried again
    clock.now += 0.5
    with pytest.raises(psycopg.OperationalError, match="the store is unreachable"):
        conn.execute("SELECT 1")  # the backoff doubled (1 s)


def test_a_read_connection_reads_when_the_server_is_there(postgres_url: str) -> None:
    conn = PgReadConn(postgres_url)
    try:
        assert conn.execute("SELECT ? + 1", (1,)).fetchone()[0] == 2
    finally:
        conn.close()
