"""The fault matrix's regressions, small enough for every run of the default suite.

tests/reliability holds the full matrix under load (opt-in marker); this keeps
each bug it found guarded here at a size of seconds: sessions released before
`[DONE]`, releases retried when the store fails, content streamed before an
upstream failure flushed to the timeline, and exactly one `Finished` per run
across the whole store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.events.session import fold as session_fold
from app.events.session import session_uuid
from app.events.store import EventStore
from tests.e2e.server import BmoServer
from tests.reliability import harness as h
from tests.reliability.slow_stream_upstream import SlowStreamUpstream, expected_content

MODEL = "up1/fake-model"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[SlowStreamUpstream]:
    with SlowStreamUpstream(tmp_path) as up:
        yield up


def turns(server: BmoServer, specs: list[dict[str, Any]], timeout: float = 60) -> list[h.StreamResult]:
    async def go() -> list[h.StreamResult]:
        async with h.client_session() as http:
            return await asyncio.gather(*(h.stream_chat(http, server, model=MODEL, **s) for s in specs))

    return asyncio.run(asyncio.wait_for(go(), timeout))


def test_a_session_is_free_the_moment_its_client_sees_done_even_after_an_upstream_error(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream
) -> None:
    server = make_server(config_text=h.bmo_config({"up1": upstream.base_url}))
    sessions = [f"done-{i}" for i in range(4)]

    async def go() -> list[tuple[h.StreamResult, h.StreamResult]]:
        async with h.client_session() as http:

            async def turn_then_next(session: str) -> tuple[h.StreamResult, h.StreamResult]:
                broken = {"reset_after": 2}
                first = await h.stream_chat(
                    http, server, model=MODEL, chunks=4, delay_ms=20, extra=broken, session_id=session
                )
                # no wait at all: [DONE] promises the session was already released
                second = await h.stream_chat(
                    http, server, model=MODEL, chunks=2, delay_ms=0, session_id=session
                )
                return first, second

            return await asyncio.gather(*(turn_then_next(s) for s in sessions))

    pairs = asyncio.run(asyncio.wait_for(go(), 60))
    for first, second in pairs:
        assert first.status == 200 and first.done and first.error is not None  # the upstream broke
        # what came before the break (a RST may discard unread bytes, so a prefix under load)
        assert expected_content(first.nonce, 2).startswith(first.content)
        assert second.complete, (second.status, second.error)
    # content streamed before the failure was flushed to the timeline, exactly
    for first, _ in pairs:
        h.check_timeline(h.timeline(server, first.request_id), first.content)
    assert h.assert_every_run_terminal_once(server.data_dir / "events.db") >= 2 * len(sessions)  # + GETs


def test_a_turn_ending_while_the_store_fails_still_frees_its_session(
    make_server: Callable[..., BmoServer], upstream: SlowStreamUpstream, tmp_path: Path
) -> None:
    switch = tmp_path / "append-faults-on"
    config = (
        h.bmo_config({"up1": upstream.base_url}, extra="") + "\n[options.store]\nunavailable_wait_s = 0.2\n"
    )
    server = make_server(config_text=config, extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)})
    sessions = [f"faulty-{i}" for i in range(3)]

    async def go() -> list[h.StreamResult]:
        async with h.client_session() as http:
            calls = [
                asyncio.create_task(
                    h.stream_chat(http, server, model=MODEL, chunks=6, delay_ms=150, session_id=s)
                )
                for s in sessions
            ]
            await asyncio.to_thread(
                h.wait_until, lambda: len(h.all_runs(server)) >= len(sessions), 20, 0.05
            )  # admitted and streaming: now the store fails
            switch.touch()
            try:
                return await asyncio.gather(*calls)
            finally:
                switch.unlink(missing_ok=True)

    try:
        first = asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        switch.unlink(missing_ok=True)
    assert all(r.content == r.expected for r in first)  # the answers themselves arrived

    store = EventStore(server.data_dir / "events.db")

    def all_free() -> bool:  # the lost releases are retried once the store is back
        states = [session_fold(session_uuid(s), store.stream(session_uuid(s))) for s in sessions]
        return all(st.active_run is None and not st.queue for st in states)

    h.wait_until(all_free, timeout=30, interval=0.1)
    store.close()
    again = turns(server, [{"chunks": 1, "delay_ms": 0, "session_id": s} for s in sessions])
    assert all(r.complete for r in again), [(r.status, r.error) for r in again]
    h.assert_every_run_terminal_once(server.data_dir / "events.db", timeout=20)


@pytest.mark.parametrize("wait_s", [0.5, 2.0])
def test_a_durable_append_answers_503_after_the_configured_wait(
    make_server: Callable[..., BmoServer], tmp_path: Path, wait_s: float
) -> None:
    switch = tmp_path / "append-faults-on"
    server = make_server(
        config_text=f"[options.store]\nunavailable_wait_s = {wait_s}\n",
        extra_env={"BMO_TEST_APPEND_FAULTS": str(switch)},
    )
    switch.touch()
    headers = {**server.headers, "X-BMO-Session-Id": "waits"}  # admission is a durable append
    body = {"model": "bmo/local", "messages": [{"role": "user", "content": "list files"}]}
    started = time.monotonic()
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    elapsed = time.monotonic() - started
    switch.unlink()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert wait_s <= elapsed < wait_s + 5  # waited the configured time, then failed fast
