"""A PostgreSQL restart under load: requests still answered, nothing lost, one outcome per run.

This test restarts the server, so it starts a PostgreSQL cluster of its own
(never the shared one, nor BMO_TEST_POSTGRES_URL's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.server import BmoServer
from tests.e2e.test_multi_instance import get, run_events, wait_until
from tests.pg import PgCluster, database_url


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


MAX_REQUESTS = 2000  # about 12,000 events: well inside the outbox


def chat(server: BmoServer, client: httpx.Client, text: str, stream: bool = False) -> httpx.Response:
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": text}], "stream": stream}
    return client.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers)


def whole(response: httpx.Response) -> int:
    """The status, or 599 for a stream that did not end cleanly (an error event, no `[DONE]`)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = response.text
        if '"error"' in text or not text.endswith("data: [DONE]\n\n"):
            return 599
    return response.status_code


@pytest.mark.parametrize("down_s", [0.0, 4.0], ids=["restart", "4s-outage"])
def test_a_postgres_restart_under_load_loses_no_event(
    make_server: Callable[..., BmoServer], own_cluster: PgCluster, tmp_path: Path, down_s: float
) -> None:
    with database_url(own_cluster) as url:
        server = make_server(extra_env={"BMO_STORE_URL": url})
        answered: list[tuple[int, str]] = []
        stop = threading.Event()

        def load(i: int) -> None:
            # bounded: `bmo/local` answers in about a millisecond, so unbounded clients would
            # push more than the outbox holds (20,000 events) through a few seconds of outage,
            # and the outbox drops (and counts) what overflows by design
            with httpx.Client(timeout=60) as client:
                while not stop.is_set() and len(answered) < MAX_REQUESTS:
                    response = chat(server, client, "list files" if i % 2 else "hello")
                    answered.append((response.status_code, response.headers.get("x-request-id", "")))

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answered) >= 20, what="load running")
        before = len(answered)
        own_cluster.restart(down_s)
        during = len(answered) - before
        # requests were answered while the server was away (a loaded machine answers fewer)
        assert during >= 1, "no request was answered while the server was away"
        stop.set()
        for thread in threads:
            thread.join(60)

        assert {status for status, _ in answered} == {200}, "a chat request failed during the outage"
        ids = {request_id for _, request_id in answered}
        assert len(ids) == len(answered)

        def ledger() -> dict[str, str]:
            with psycopg.connect(url) as conn:  # the whole ledger (more rows than one page)
                rows = conn.execute(
                    "SELECT request_id, outcome FROM openai_compat_runs WHERE route = 'chat_completions'"
                ).fetchall()
            return dict(rows)

        # the outbox flushes once the server is back, and the projector catches up: all of it
        wait_until(lambda: set(ledger()) == ids, timeout=60, what="every answered request in the ledger")
        assert not get(server, "/v1/openai-compat/posture")["ledger"]["degraded"]
        assert set(ledger().values()) == {"final_answer"}
        with psycopg.connect(url) as conn:
            finished = conn.execute(
                "SELECT count(*), count(DISTINCT originator_id) FROM bmo_events "
                "WHERE topic = 'app.events.run:Finished'"
            ).fetchone()
        assert finished[0] == finished[1]  # one terminal event per run
        if down_s > 2:  # longer than a save waits for a connection: degraded, the outbox carried it
            recovered = [r for r in server.records() if r["msg"] == "openai_compat.persistence_recovered"]
            assert recovered and recovered[0]["flushed_events"] > 0 and recovered[0]["overflowed_events"] == 0
        for request_id in list(ids)[:: max(1, len(ids) // 25)]:  # a sample of timelines, whole
            types = [e["type"] for e in run_events(server, request_id)]
            assert types[0] == "Fired" and types.count("Finished") == 1 and types[-1] == "Finished"
        server.stop()


OUTAGE_ANSWERS = 40  # answers the clients must get while the server is away
ANSWER_BOUND_S = 5.0  # each of them within this (a `bmo/local` answer takes milliseconds)
SHORT_LEASE_S = 2.0


@pytest.mark.parametrize("instances", [1, 2], ids=["one-instance", "two-instances"])
def test_a_long_outage_keeps_answering_at_a_steady_rate_and_loses_nothing(
    make_server: Callable[..., BmoServer], own_cluster: PgCluster, tmp_path: Path, instances: int
) -> None:
    """PostgreSQL stays down until the clients have had many answers and every instance's
    lease has long lapsed: answers keep coming, streamed or not, each promptly (no request
    waits on the store), and when the server is back the outboxes flush, nothing is lost and every run
    ends once, with its own outcome (no sweep takes the outage for an instance's death)."""
    with database_url(own_cluster) as url:
        config_text = f"[options.store]\nlease_s = {SHORT_LEASE_S}\n"
        servers = [
            make_server(
                data_dir=tmp_path / f"data-{i}", extra_env={"BMO_STORE_URL": url}, config_text=config_text
            )
            for i in range(instances)
        ]
        answered: list[tuple[int, str, float, float]] = []  # status, request id, sent at, took
        stop = threading.Event()

        def load(i: int) -> None:
            server = servers[i % len(servers)]
            with httpx.Client(timeout=60) as client:
                while not stop.is_set() and len(answered) < MAX_REQUESTS:
                    sent = time.monotonic()
                    response = chat(server, client, "list files" if i % 4 < 2 else "hello", stream=i % 2 == 1)
                    took = time.monotonic() - sent
                    request_id = response.headers.get("x-request-id", "")
                    answered.append((whole(response), request_id, sent, took))

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answered) >= 20, what="load running")
        own_cluster.halt()
        down_at = time.monotonic()
        try:
            # the outage lasts until the clients had their answers and well past the lease
            # (the outage under test; each condition is waited for, not slept for)
            def sent_while_down() -> list[tuple[int, str, float, float]]:
                return [a for a in list(answered) if a[2] >= down_at]

            wait_until(
                lambda: len(sent_while_down()) >= OUTAGE_ANSWERS or len(answered) >= MAX_REQUESTS,
                timeout=60,
                what=f"{OUTAGE_ANSWERS} answers while PostgreSQL is down",
            )
            wait_until(lambda: time.monotonic() - down_at > 3 * SHORT_LEASE_S, what="the lease lapsed")
            during = sent_while_down()
        finally:
            own_cluster.resume()
        assert len(during) >= OUTAGE_ANSWERS, f"only {len(during)} answers while the server was away"
        slow = [round(took, 2) for _, _, _, took in during if took > ANSWER_BOUND_S]
        assert not slow, f"answers during the outage took {slow} s"
        stop.set()
        for thread in threads:
            thread.join(60)

        assert {status for status, *_ in answered} == {200}, "a chat request failed during the outage"
        ids = {request_id for _, request_id, *_ in answered}
        assert len(ids) == len(answered)

        def ledger() -> dict[str, str]:
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT request_id, outcome FROM openai_compat_runs WHERE route = 'chat_completions'"
                ).fetchall()
            return dict(rows)

        def ended() -> dict[str, str]:  # a run's Finished may reach the ledger after its Fired
            return {request_id: outcome for request_id, outcome in ledger().items() if outcome is not None}

        wait_until(lambda: set(ended()) == ids, timeout=60, what="every answered request ended in the ledger")
        assert set(ended().values()) == {"final_answer"}, "a live instance's run was closed by a sweep"
        with psycopg.connect(url) as conn:
            finished = conn.execute(
                "SELECT count(*), count(DISTINCT originator_id) FROM bmo_events "
                "WHERE topic = 'app.events.run:Finished'"
            ).fetchone()
        assert finished[0] == finished[1] == len(ids)  # one terminal event per run
        for server in servers:
            recovered = [r for r in server.records() if r["msg"] == "openai_compat.persistence_recovered"]
            assert recovered and recovered[0]["flushed_events"] > 0
            assert recovered[0]["overflowed_events"] == 0
            wait_until(
                lambda server=server: not get(server, "/v1/openai-compat/posture")["ledger"]["degraded"],
                what="not degraded",
            )
            server.stop()
