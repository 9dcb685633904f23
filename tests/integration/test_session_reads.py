"""A chat request in a session reads the session stream from the store once.

The session is folded for the model rule; admission, the divergence check and the
release decide on that state and the states their own saves leave (a stale one is
refused by the store's version check, then reloaded). Before, each of them read
and folded the stream again: four reads per request. The seam: the store's
`stream`, counted while a real app (`build_asgi`, the local model) answers
requests in-process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient

from app.bootstrap import Bind, build_asgi
from app.config import Settings
from app.events.session import fold, session_uuid
from app.events.store import EventStore

SESSION = "s-reads"


@pytest.fixture
def session_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[UUID]]:
    """Streams the server read (its reads run on worker threads; the test's own on this one)."""
    reads: list[UUID] = []
    stream = EventStore.stream
    main = threading.main_thread()

    def counting(self: EventStore, stream_id: UUID, after_version: int = 0) -> list[Any]:
        if threading.current_thread() is not main:
            reads.append(stream_id)
        return stream(self, stream_id, after_version)

    monkeypatch.setattr(EventStore, "stream", counting)
    yield reads


def test_a_chat_request_folds_its_session_once(tmp_path: Path, session_reads: list[UUID]) -> None:
    asgi = build_asgi(Settings(), data_dir=tmp_path, bind=Bind("127.0.0.1", 9, None))
    store = EventStore(tmp_path / "events.db")
    stream_id = session_uuid(SESSION)

    async def settled() -> None:
        """Until the last run has released the session (the release may follow the response)."""
        for _ in range(2000):
            state = fold(stream_id, store.stream(stream_id))
            if state.opened and state.active_run is None:
                return
            await asyncio.sleep(0.005)  # polling a condition, bounded
        raise AssertionError("the session was never released")

    async def scenario() -> list[int]:
        counts = []
        async with AsyncTestClient(app=asgi) as client:
            for text in ("first", "second", "third"):
                session_reads.clear()
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": "bmo/local", "messages": [{"role": "user", "content": text}]},
                    headers={"X-BMO-Session-Id": SESSION},
                )
                assert response.status_code == 200, response.text
                await settled()
                counts.append(session_reads.count(stream_id))
        return counts

    assert asyncio.run(scenario()) == [1, 1, 1]  # opening the session, then two turns in it
    store.close()
