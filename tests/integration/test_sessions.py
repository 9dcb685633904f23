"""The session service in-process: admission, the FIFO queue, release, deferred runs.

Real parts only: a SQLite event store in a tmp dir, the real writer and executor, the
real turn runner with the offline `bmo/local` model, the real permission gate and
records. These are the promises `tests/e2e/test_sessions.py` checks through a server,
here where a mutation of `app/agent/sessions.py` can be seen (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from app.agent.lifecycle import RequestLifecycle, RouteDefaults
from app.agent.permissions import PermissionGate
from app.agent.sessions import SessionService
from app.agent.tools.registry import ToolRegistry
from app.agent.transcript import options_to_dict
from app.agent.turns import TurnOptions, TurnPolicy, TurnRunner
from app.commands.admit_run import AdmitRun
from app.commands.execute import Executor
from app.commands.queue_run import QueueRun
from app.errors import Interrupted, ProviderError, SessionQueueFull
from app.events.run import ContentAppended, Finished, Fired, HistoryDiverged, Queued, fold
from app.events.select import open_event_store
from app.events.session import RunQueued, session_uuid
from app.events.writer import EventWriter
from app.providers.base import ModelRequest
from app.providers.catalog import ModelCatalog
from app.providers.local import LocalProvider
from app.telemetry import Records
from tests.core.helpers import now

SESSION = "s-svc"
MODEL = "bmo/local"
DEFAULTS = RouteDefaults(tool_policy="chat_only", ambiguity_action="ask", default_model=MODEL)


class Harness:
    """A session service wired as `bmo serve` wires it, minus the HTTP layer."""

    def __init__(
        self, tmp: Path, *, max_queue_depth: int = 3, providers: dict[str, Any] | None = None
    ) -> None:
        self.switch = tmp / "faults-on"
        self.store = open_event_store(tmp / "data", self.switch)
        self.log = tmp / "log.jsonl"
        self.records = Records(self.log)
        # short waits (`bmo serve`: 5 s, and retries up to 2 s apart) keep the failing-store cases quick
        self.writer = EventWriter(self.store, unavailable_wait_s=0.2, backoff_cap_s=0.2)
        self.executor = Executor(self.store, self.writer)
        workspace = tmp / "ws"
        workspace.mkdir()
        gate = PermissionGate(self.executor, timeout_s=5.0)
        self.turns = TurnRunner(
            self.executor,
            lambda: ToolRegistry([]),
            workspace,
            TurnPolicy(
                tool_policy="chat_only", allowed_tools=frozenset(), max_steps=4, show_tool_activity=False
            ),
            gate,
        )
        self.sessions = SessionService(
            executor=self.executor,
            turns=self.turns,
            catalog=ModelCatalog({"bmo": LocalProvider(), **(providers or {})}),
            records=self.records,
            defaults=DEFAULTS,
            max_queue_depth=max_queue_depth,
            release_retry_s=0.05,  # a refused release is retried every 1 s in `bmo serve`
        )

    async def lifecycle(
        self, model: str = MODEL, requester: str = "", route: str = "chat_completions"
    ) -> RequestLifecycle:
        lifecycle = RequestLifecycle(
            request_id=uuid4().hex,
            route=route,
            session_id=SESSION,
            client_ua="test-ua",
            defaults=DEFAULTS,
            executor=self.executor,
            records=self.records,
            requester=requester,
        )
        lifecycle.model = model
        await lifecycle.fire(model=model, stream=False)
        return lifecycle

    async def admit(
        self,
        text: str,
        *,
        model: str = MODEL,
        mode: str = "code",
        earlier: list[dict[str, Any]] | None = None,
        requester: str = "",
        max_tokens: int | None = None,
        full_history: bool = False,
    ) -> Any:
        lifecycle = await self.lifecycle(model, requester)
        options = options_to_dict(TurnOptions(stream=False, mode=mode, max_tokens=max_tokens))
        if full_history:  # as the chat route saves it for a client that sends its whole conversation
            options["full_history"] = True
        return await self.sessions.admit(
            lifecycle, model, [{"role": "user", "content": text}], earlier or [], options
        )

    async def run_events(self, run_id: str) -> list[Any]:
        return await asyncio.to_thread(self.store.stream, UUID(hex=run_id))

    async def finished(self, run_id: str, timeout: float = 15.0) -> Finished:
        """The run's Finished event, once written (polls the store; bounded)."""
        return await self._until(lambda: self._finished(run_id), timeout, f"run {run_id} never finished")

    async def _finished(self, run_id: str) -> Finished | None:
        return next((e for e in await self.run_events(run_id) if isinstance(e, Finished)), None)

    async def free(self, timeout: float = 15.0) -> Any:
        """The session once nothing is active or queued."""

        async def check() -> Any:
            state = await self.sessions.state(SESSION)
            return state if state.active_run is None and not state.queue else None

        return await self._until(check, timeout, "session never became free")

    @staticmethod
    async def _until(check: Callable[[], Awaitable[Any]], timeout: float, why: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(why)

    async def close(self) -> None:
        self.switch.unlink(missing_ok=True)
        await self.sessions.aclose()
        await self.writer.close()
        self.store.close()
        self.records.close()


def scenario(body: Callable[[Harness], Awaitable[None]], tmp: Path, **kw: Any) -> None:
    async def main() -> None:
        h = Harness(tmp, **kw)
        h.writer.start()
        try:
            await asyncio.wait_for(body(h), timeout=45)
        finally:
            await h.close()

    asyncio.run(main())


def answer_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentAppended))


def test_a_free_session_admits_at_once_and_a_busy_one_queues_in_order(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        assert a.active and a.position == 0
        assert (await h.sessions.state(SESSION)).active_run == a.run_id
        b = await h.admit("second")
        c = await h.admit("third")
        assert (b.active, b.position) == (False, 1)
        assert (c.active, c.position) == (False, 2)
        assert b.run_id != c.run_id != a.run_id
        state = await h.sessions.state(SESSION)
        assert state.active_run == a.run_id and state.queue == (b.run_id, c.run_id)

    scenario(body, tmp_path)


def test_a_full_queue_refuses_and_keeps_what_was_queued(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.admit("one")
        queued = [await h.admit(f"q{i}") for i in range(2)]
        with pytest.raises(SessionQueueFull) as full:
            await h.admit("one too many")
        assert f"session '{SESSION}' already has 2 queued run(s) (max_queue_depth = 2)" in full.value.message
        assert (await h.sessions.state(SESSION)).queue == tuple(q.run_id for q in queued)

    scenario(body, tmp_path, max_queue_depth=2)


def test_a_queued_run_has_its_own_stream_and_fired_record(tmp_path: Path) -> None:
    """Fired (with the requester) and Queued (turn, options, who was answered 409), and the log line."""

    async def body(h: Harness) -> None:
        await h.admit("first")
        lifecycle = await h.lifecycle(requester="alice")
        options = options_to_dict(TurnOptions(stream=False, mode="code"))
        turn = [{"role": "user", "content": "queued words"}]
        b = await h.sessions.admit(lifecycle, MODEL, turn, [], options)
        events = await h.run_events(b.run_id)
        fired = next(e for e in events if isinstance(e, Fired))
        queued = next(e for e in events if isinstance(e, Queued))
        assert (fired.session_id, fired.model, fired.requester, fired.client_ua) == (
            SESSION,
            MODEL,
            "alice",
            "test-ua",
        )
        assert fired.stream is False
        assert fired.timestamp.tzinfo is not None and queued.timestamp.tzinfo is not None
        assert (queued.session_id, queued.position, queued.by_request) == (SESSION, 1, lifecycle.request_id)
        assert queued.messages == turn and queued.options["mode"] == "code"
        state = fold(UUID(hex=b.run_id), events)
        assert state.queued and not state.started and state.requester == "alice"
        h.records.close()
        lines = [json.loads(line) for line in h.log.read_text().splitlines() if line.strip()]
        assert any(
            r.get("request_id") == b.run_id and r.get("queued_by") == lifecycle.request_id for r in lines
        ), lines

    scenario(body, tmp_path)


def test_release_starts_the_first_queued_run_which_answers_and_frees_the_session(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("what is two plus two")
        c = await h.admit("and three")
        turn_a = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        await h.sessions.release(SESSION, a.run_id, "final_answer", turn_a)
        fin_b = await h.finished(b.run_id)
        fin_c = await h.finished(c.run_id)
        await h.free()
        session_events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        released = [(e.run_id, e.outcome) for e in session_events if type(e).__name__ == "RunReleased"]
        assert released == [
            (a.run_id, "final_answer"),
            (b.run_id, "final_answer"),
            (c.run_id, "final_answer"),
        ]
        assert fin_b.outcome == fin_c.outcome == "final_answer"
        assert fin_b.timestamp <= fin_c.timestamp  # FIFO: B before C
        events_b = await h.run_events(b.run_id)
        answer_b = answer_of(events_b)
        assert answer_b
        state = await h.free()
        transcript = list(state.transcript)
        # the session's transcript: A's turn, then B's question and answer, then C's
        assert transcript[:2] == turn_a
        assert transcript[2] == {"role": "user", "content": "what is two plus two"}
        assert transcript[3]["role"] == "assistant" and transcript[3]["content"] == answer_b
        assert transcript[4] == {"role": "user", "content": "and three"}
        assert transcript[5]["content"] == answer_of(await h.run_events(c.run_id))
        # the next request finds the session free and sees the whole transcript
        d = await h.admit("again")
        assert d.active and list(d.transcript) == transcript

    scenario(body, tmp_path)


def test_a_queued_run_answers_the_session_history_it_joins(tmp_path: Path) -> None:
    """The deferred run's model sees the transcript left by the run before it."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("repeat after me")
        turn_a = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
        await h.sessions.release(SESSION, a.run_id, "final_answer", turn_a)
        await h.finished(b.run_id)
        events = await h.run_events(b.run_id)
        state = fold(UUID(hex=b.run_id), events)
        assert state.started and state.finished and state.model == MODEL
        assert state.prompt_tokens > 0  # the model was called with the history
        assert not any(isinstance(e, HistoryDiverged) for e in events)
        await h.free()

    scenario(body, tmp_path)


def test_a_queued_clarify_run_answers_with_a_clarification(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("fix it", mode="clarify")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin = await h.finished(b.run_id)
        assert fin.outcome == "clarification" and fin.status_code == 200 and fin.finish_reason == "stop"
        events = await h.run_events(b.run_id)
        text = answer_of(events)
        assert text
        assert all(e.timestamp.tzinfo is not None for e in events if isinstance(e, ContentAppended))
        state = await h.free()
        assert list(state.transcript)[-1] == {"role": "assistant", "content": text}

    scenario(body, tmp_path)


def test_a_queued_run_whose_model_is_gone_ends_with_an_error_and_frees_the_session(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("later", model="gone/model")
        c = await h.admit("after that")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin = await h.finished(b.run_id)
        assert (fin.outcome, fin.status_code) == ("error_500", 500)
        assert fin.error == "model 'gone/model' is no longer configured"
        assert (await h.finished(c.run_id)).outcome == "final_answer"  # the queue moves on
        await h.free()

    scenario(body, tmp_path)


async def queue_without_turn(h: Harness, run_id: str) -> None:
    """A queueing saved without the run's turn (as older events were)."""
    await h.executor.execute(
        AdmitRun(
            stream_id=session_uuid(SESSION),
            at=now(),
            session_id=SESSION,
            run_id=uuid4().hex,
            queued_run_id=run_id,
            model=MODEL,
            requester="",
            max_queue_depth=5,
            by_request="",
            messages=[],
            earlier=[],
            options={},
            fired={},
        ),
        durable=True,
    )


def test_a_queued_run_with_nothing_to_start_never_holds_the_session(tmp_path: Path) -> None:
    """Queueings saved without their turn (older events), one with no run stream at all and one
    whose stream has only `Fired`: each ends as an error, and the queue moves on."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        orphan = uuid4().hex
        await queue_without_turn(h, orphan)
        fired_only = await h.lifecycle()  # its own stream holds Fired, but no Queued
        await queue_without_turn(h, fired_only.request_id)
        c = await h.admit("after them")
        assert (await h.sessions.state(SESSION)).queue == (orphan, fired_only.request_id, c.run_id)
        before = now()
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        assert (await h.finished(c.run_id)).outcome == "final_answer"
        fin = await h.finished(fired_only.request_id)
        assert (fin.outcome, fin.status_code, fin.elapsed_ms) == ("error_500", 500, 0.0)
        assert fin.error == "the queued run could not be started" and fin.timestamp >= before
        assert await h.run_events(orphan) == []  # nothing is written for a run that never fired
        state = await h.free()
        released = {
            (e.run_id, e.outcome)
            for e in await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
            if type(e).__name__ == "RunReleased"
        }
        assert {(orphan, "error_500"), (fired_only.request_id, "error_500")} <= released
        stamps = [
            e.timestamp
            for e in await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
            if type(e).__name__ == "RunReleased"
        ]
        assert all(s is not None and s >= before for s in stamps[1:])
        assert state.active_run is None

    scenario(body, tmp_path, max_queue_depth=5)


def test_a_release_while_the_store_fails_is_retried_until_it_recovers(tmp_path: Path) -> None:
    """The release is retried (durably) for as long as the store fails, not once: the store is
    kept failing until two retries were refused, then the queued run starts."""

    async def body(h: Harness) -> None:
        refused_releases: list[int] = []

        def on_failure(events: Any, _error: str) -> None:
            refused_releases.extend(1 for e in events if type(e).__name__ == "RunReleased")

        h.writer.on_failure = on_failure
        a = await h.admit("hello")
        b = await h.admit("queued behind")
        h.switch.touch()
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])  # returns: retried in the background
        assert (await h.sessions.state(SESSION)).active_run == a.run_id
        await h._until(lambda: _at_least(refused_releases, 3), 20, "the release was not retried twice")
        assert (await h.sessions.state(SESSION)).active_run == a.run_id  # nothing saved meanwhile
        h.switch.unlink()
        assert (await h.finished(b.run_id)).outcome == "final_answer"
        await h.free()

    scenario(body, tmp_path)


async def _at_least(items: list[int], n: int) -> bool | None:
    return True if len(items) >= n else None


def test_a_queued_run_follows_a_client_history_that_diverged(tmp_path: Path) -> None:
    """The deferred run answers the client's history; the session's transcript follows it."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        client = [{"role": "user", "content": "another start"}, {"role": "assistant", "content": "ok"}]
        b = await h.admit("go on", earlier=client)
        turn_a = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        await h.sessions.release(SESSION, a.run_id, "final_answer", turn_a)
        await h.finished(b.run_id)
        diverged = [e for e in await h.run_events(b.run_id) if isinstance(e, HistoryDiverged)]
        assert len(diverged) == 1
        assert (diverged[0].kept, diverged[0].dropped, diverged[0].client_messages) == (0, 2, 3)
        assert diverged[0].timestamp.tzinfo is not None
        state = await h.free()
        transcript = list(state.transcript)
        assert transcript[:3] == [*client, {"role": "user", "content": "go on"}]
        replaced = [
            e
            for e in await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
            if type(e).__name__ == "TranscriptReplaced"
        ]
        assert [(e.run_id, e.kept, e.dropped) for e in replaced] == [(b.run_id, 0, 2)]
        assert replaced[0].timestamp.tzinfo is not None
        assert "hello" not in [m["content"] for m in transcript]

    scenario(body, tmp_path)


def test_the_session_stream_records_the_queued_turn_with_the_queueing(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.admit("hello")
        b = await h.admit("queued", earlier=[{"role": "user", "content": "before"}])
        events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        q = next(e for e in events if isinstance(e, RunQueued))
        assert (q.run_id, q.position) == (b.run_id, 1)
        assert q.messages == [{"role": "user", "content": "queued"}]
        assert q.earlier == [{"role": "user", "content": "before"}]
        assert q.fired and q.fired["session_id"] == SESSION and q.fired["model"] == MODEL

    scenario(body, tmp_path)


def test_a_session_is_opened_once_bound_to_its_first_requests_model(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        await h.admit("queued")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        await h.free()
        await h.admit("again")
        events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        opened = [e for e in events if type(e).__name__ == "SessionOpened"]
        assert len(opened) == 1 and (opened[0].session_id, opened[0].model) == (SESSION, MODEL)
        assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
        state = await h.sessions.state(SESSION)
        assert state.opened and state.session_id == SESSION and state.model == MODEL

    scenario(body, tmp_path)


def test_a_run_queued_by_an_older_version_starts_from_its_own_stream(tmp_path: Path) -> None:
    """Older queueings carried no turn: the run's own `Fired` and `Queued` hold it, and it still runs."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        legacy = await h.lifecycle(requester="old-client")
        turn = [{"role": "user", "content": "from an older version"}]
        await queue_without_turn(h, legacy.request_id)
        await h.executor.execute(
            QueueRun(
                run_id=legacy.run_id,
                at=now(),
                session_id=SESSION,
                position=1,
                by_request="r-409",
                messages=turn,
                options=options_to_dict(TurnOptions(stream=False, mode="code")),
            ),
            durable=True,
        )
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin = await h.finished(legacy.request_id)
        assert fin.outcome == "final_answer"
        answer = answer_of(await h.run_events(legacy.request_id))
        state = await h.free()
        assert list(state.transcript)[-2:] == [turn[0], {"role": "assistant", "content": answer}]

    scenario(body, tmp_path)


def test_a_release_is_recorded_with_its_outcome_and_turn(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        turn = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        before = now()
        await h.sessions.release(SESSION, a.run_id, "cancelled", turn)
        events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        released = [e for e in events if type(e).__name__ == "RunReleased"]
        assert [(e.run_id, e.outcome, e.turn) for e in released] == [(a.run_id, "cancelled", turn)]
        assert before <= released[0].timestamp <= now()

    scenario(body, tmp_path)


def test_a_queued_run_whose_own_stream_was_never_written_gets_it_when_it_starts(tmp_path: Path) -> None:
    """The queueing request died after its one save: the run's own Fired and Queued are written by
    whoever starts it, and it runs."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        lost = RequestLifecycle(
            request_id=uuid4().hex,
            route="chat_completions",
            session_id=SESSION,
            client_ua="lost-ua",
            defaults=DEFAULTS,
            executor=h.executor,
            records=h.records,
        )
        turn = [{"role": "user", "content": "my request died"}]
        await h.executor.execute(
            AdmitRun(
                stream_id=session_uuid(SESSION),
                at=now(),
                session_id=SESSION,
                run_id=uuid4().hex,
                queued_run_id=lost.request_id,
                model=MODEL,
                requester="carol",
                max_queue_depth=5,
                by_request="r-409",
                messages=turn,
                earlier=[],
                options=options_to_dict(TurnOptions(stream=False, mode="code")),
                fired=lost.fired_record(model=MODEL, stream=False),
            ),
            durable=True,
        )
        assert await h.run_events(lost.request_id) == []
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin = await h.finished(lost.request_id)
        assert fin.outcome == "final_answer"
        events = await h.run_events(lost.request_id)
        fired = next(e for e in events if isinstance(e, Fired))
        queued = next(e for e in events if isinstance(e, Queued))
        assert (fired.client_ua, fired.requester, fired.session_id) == ("lost-ua", "carol", SESSION)
        assert (queued.by_request, queued.messages) == ("r-409", turn)
        await h.free()

    scenario(body, tmp_path)


def test_a_queued_run_that_cannot_be_prepared_never_holds_the_session(tmp_path: Path) -> None:
    """Its saved fired fields are incomplete, so writing its own stream fails: it is given up and the
    queue moves on."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        broken = uuid4().hex
        await h.executor.execute(
            AdmitRun(
                stream_id=session_uuid(SESSION),
                at=now(),
                session_id=SESSION,
                run_id=uuid4().hex,
                queued_run_id=broken,
                model=MODEL,
                requester="",
                max_queue_depth=5,
                by_request="",
                messages=[{"role": "user", "content": "x"}],
                earlier=[],
                options={},
                fired={"session_id": SESSION},
            ),
            durable=True,
        )
        c = await h.admit("after it")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        assert (await h.finished(c.run_id)).outcome == "final_answer"
        await h.free()

    scenario(body, tmp_path, max_queue_depth=5)


class ScriptedUpstream:
    """A hosted model's failures, scripted (the only stand-in these tests use): `fail/boom` raises
    a plain error, `fail/refused` the upstream error bmo raises for a provider, `fail/hang` never
    answers (it sets `entered` when asked)."""

    name = "fail"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    def models(self) -> tuple[str, ...]:
        return ("boom", "refused", "hang")

    async def stream(self, request: ModelRequest) -> Any:
        if request.model == "boom":
            raise RuntimeError("boom")
        if request.model == "refused":
            raise ProviderError("the upstream refused the request")
        self.entered.set()
        await asyncio.Event().wait()
        yield  # an async generator, like every provider's stream

    async def aclose(self) -> None:
        """Nothing to release."""


def terminal_records(h: Harness, run_id: str) -> list[dict[str, Any]]:
    h.records.close()
    lines = [json.loads(line) for line in h.log.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("request_id") == run_id and r.get("terminal") is True]


def test_a_deferred_run_whose_model_fails_ends_with_that_error_and_frees_the_session(tmp_path: Path) -> None:
    """Nobody waits on a deferred run to be told: its failure is its terminal event, with the status
    of bmo's own error (502 for the upstream's) or 500 and the error's type for any other, and the
    queue moves on."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("raises", model="fail/boom")
        c = await h.admit("refused", model="fail/refused")
        d = await h.admit("after them")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin_b = await h.finished(b.run_id)
        assert (fin_b.outcome, fin_b.status_code, fin_b.error) == ("error_500", 500, "RuntimeError: boom")
        fin_c = await h.finished(c.run_id)
        assert (fin_c.outcome, fin_c.status_code, fin_c.error) == (
            "error_500",
            502,
            "the upstream refused the request",
        )
        assert (await h.finished(d.run_id)).outcome == "final_answer"
        await h.free()
        released = [
            (e.run_id, e.outcome)
            for e in await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
            if type(e).__name__ == "RunReleased"
        ]
        assert released[1:3] == [(b.run_id, "error_500"), (c.run_id, "error_500")]
        (record,) = terminal_records(h, c.run_id)
        assert (record["outcome"], record["status_code"], record["route"], record["session_id"]) == (
            "error_500",
            502,
            "chat_completions",
            SESSION,
        )

    scenario(body, tmp_path, max_queue_depth=5, providers={"fail": ScriptedUpstream()})


def test_a_deferred_run_in_flight_at_shutdown_ends_interrupted_and_frees_the_session(tmp_path: Path) -> None:
    upstream = ScriptedUpstream()

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("never answered", model="fail/hang")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        await asyncio.wait_for(upstream.entered.wait(), 20)
        await h.sessions.aclose()  # the server's shutdown
        fin = await h.finished(b.run_id)
        assert (fin.outcome, fin.status_code, fin.error) == ("error_500", 500, Interrupted.REASON)
        await h.free()

    scenario(body, tmp_path, providers={"fail": upstream})


def test_a_deferred_run_keeps_its_requests_options_and_ends_with_its_finish_reason(tmp_path: Path) -> None:
    """A queued request's max_tokens reaches its model (the answer is cut: finish reason `length`);
    a full answer ends `stop`; both with status 200 and the request's route in their records."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("tell me a long story about the sea", max_tokens=1)
        c = await h.admit("and a short one")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        fin_b = await h.finished(b.run_id)
        assert (fin_b.outcome, fin_b.status_code, fin_b.finish_reason) == ("final_answer", 200, "length")
        fin_c = await h.finished(c.run_id)
        assert (fin_c.outcome, fin_c.status_code, fin_c.finish_reason) == ("final_answer", 200, "stop")
        await h.free()
        (record,) = terminal_records(h, b.run_id)
        assert (record["status_code"], record["route"]) == (200, "chat_completions")

    scenario(body, tmp_path)


def test_a_deferred_run_of_a_client_that_sends_its_whole_history_follows_it(tmp_path: Path) -> None:
    """`full_history` (the client sends its whole conversation) is kept with the queueing: a lone new
    turn is then the client's whole history, which the session follows, not a turn to append."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("a fresh start", full_history=True)
        turn_a = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
        await h.sessions.release(SESSION, a.run_id, "final_answer", turn_a)
        await h.finished(b.run_id)
        diverged = [e for e in await h.run_events(b.run_id) if isinstance(e, HistoryDiverged)]
        assert [(d.kept, d.dropped, d.client_messages) for d in diverged] == [(0, 2, 1)]
        state = await h.free()
        assert state.transcript[0] == {"role": "user", "content": "a fresh start"}

    scenario(body, tmp_path)


def test_a_run_with_nothing_to_start_is_released_later_when_the_store_fails_meanwhile(tmp_path: Path) -> None:
    """The store fails just as a queued run with nothing to start is given up: its release is
    retried until the store takes it, and the session is freed."""

    async def body(h: Harness) -> None:
        refused: list[str] = []
        h.writer.on_failure = lambda events, _error: refused.extend(
            e.run_id for e in events if type(e).__name__ == "RunReleased"
        )
        a = await h.admit("hello")
        orphan = uuid4().hex
        await queue_without_turn(h, orphan)
        failing = False

        def fail_after_the_release(_position: int) -> None:
            if failing:  # a's release was saved: the store fails from here on
                h.switch.touch()

        h.writer.on_commit = fail_after_the_release
        failing = True
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        failing = False
        # twice: the first save of its release failed for good (PersistFailed), and it was retried
        await h._until(lambda: _at_least([r for r in refused if r == orphan], 2), 20, "release not retried")
        assert (await h.sessions.state(SESSION)).active_run == orphan
        h.switch.unlink()
        state = await h.free()
        assert state.active_run is None

    scenario(body, tmp_path)


def test_a_deferred_run_ends_in_the_context_of_the_request_that_queued_it(tmp_path: Path) -> None:
    """Queued from the Responses route: its terminal record names that route, and it is fired once
    (when it was queued), not again when it starts or ends."""

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        lifecycle = await h.lifecycle(route="responses")
        options = options_to_dict(TurnOptions(stream=False, mode="code"))
        b = await h.sessions.admit(lifecycle, MODEL, [{"role": "user", "content": "later"}], [], options)
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        assert (await h.finished(b.run_id)).outcome == "final_answer"
        await h.free()
        fired = [e for e in await h.run_events(b.run_id) if isinstance(e, Fired)]
        assert len(fired) == 1 and fired[0].route == "responses"
        h.records.close()
        lines = [json.loads(line) for line in h.log.read_text().splitlines() if line.strip()]
        assert [r["route"] for r in lines if r.get("request_id") == b.run_id and r.get("terminal")] == [
            "responses"
        ]
        fired_records = [
            r for r in lines if r.get("request_id") == b.run_id and r["msg"] == "openai_compat.fired"
        ]
        assert len(fired_records) == 1 and fired_records[0]["queued_by"] == lifecycle.request_id
        assert (fired_records[0]["route"], fired_records[0]["session_id"]) == ("responses", SESSION)

    scenario(body, tmp_path)


def test_a_streamed_request_queued_is_recorded_as_streamed_with_zone_aware_session_events(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        await h.admit("hello")
        lifecycle = await h.lifecycle()
        options = options_to_dict(TurnOptions(stream=True, mode="code"))
        b = await h.sessions.admit(lifecycle, MODEL, [{"role": "user", "content": "later"}], [], options)
        fired = next(e for e in await h.run_events(b.run_id) if isinstance(e, Fired))
        assert fired.stream is True
        session_events = await asyncio.to_thread(h.store.stream, session_uuid(SESSION))
        assert session_events and all(e.timestamp.tzinfo is not None for e in session_events)

    scenario(body, tmp_path)


def test_shutdown_lets_deferred_runs_finish_within_the_drain_and_interrupts_the_rest(tmp_path: Path) -> None:
    """aclose(drain_s): a deferred run that ends within the drain ends as it would; one still running
    at its end is interrupted, and aclose returns at the drain, not when the run would end."""
    upstream = ScriptedUpstream()

    async def body(h: Harness) -> None:
        a = await h.admit("hello")
        b = await h.admit("answered in time")
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        await h.sessions.aclose(drain_s=20)  # b ends well within it
        assert (await h.finished(b.run_id)).outcome == "final_answer"
        c = await h.admit("again")
        d = await h.admit("never answered", model="fail/hang")
        await h.sessions.release(SESSION, c.run_id, "final_answer", [])
        await asyncio.wait_for(upstream.entered.wait(), 20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await h.sessions.aclose(drain_s=0.5)
        assert 0.5 <= loop.time() - started < 15
        fin = await h.finished(d.run_id)
        assert (fin.outcome, fin.error) == ("error_500", Interrupted.REASON)

    scenario(body, tmp_path, providers={"fail": upstream})


def test_a_queueing_saved_just_before_the_store_fails_still_queues_the_run(tmp_path: Path) -> None:
    """The store fails after the session's queueing was saved but before the queued run's own
    stream was: admission still answers "queued" (the stream's events wait in the outbox), and
    the run starts and answers once the session is free."""

    async def body(h: Harness) -> None:
        a = await h.admit("first")
        lifecycle = await h.lifecycle()
        fired = h.records.fired

        def then_fail(**fields: Any) -> None:
            fired(**fields)
            if fields.get("queued_by"):  # the queued run's record: its queueing is saved already
                h.switch.touch()

        h.records.fired = then_fail  # type: ignore[method-assign]
        options = options_to_dict(TurnOptions(stream=False, mode="code"))
        b = await h.sessions.admit(lifecycle, MODEL, [{"role": "user", "content": "later"}], [], options)
        assert not b.active and b.position == 1
        h.switch.unlink()
        assert await h.writer.flush(20)
        assert any(isinstance(e, Fired) for e in await h.run_events(b.run_id))  # from the outbox
        await h.sessions.release(SESSION, a.run_id, "final_answer", [])
        assert (await h.finished(b.run_id)).outcome == "final_answer"
        await h.free()

    scenario(body, tmp_path)
