"""One test per promise the core makes, each breaking when its line of code is broken.

Every test here runs in-process on a real SQLite store. Conflicts are real:
a second writer saves the next version behind the executor's (or the
writer's) back, so the reload-and-decide-again paths run deterministically.
A crash between the rows and the tracking position is the projector's
`between_rows_and_tracking` seam; a failing store is `FaultInjectingStore`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import uuid4

import msgspec
import pytest
from eventsourcing.persistence import IntegrityError

from app.commands import admit_run, ask_permission, release_run
from app.commands.admit_run import AdmitRun
from app.commands.append_content import AppendContent
from app.commands.append_content import decide as decide_content
from app.commands.ask_permission import AskPermission
from app.commands.decide_permission import DecidePermission
from app.commands.decide_permission import decide as decide_answer
from app.commands.execute import Executor
from app.commands.release_run import ReleaseRun
from app.events.faults import FaultInjectingStore
from app.events.run import ContentAppended, Fired, PermissionAsked, RunState, fold
from app.events.session import RunActivated, SessionState, session_uuid
from app.events.session import fold as session_fold
from app.events.store import EventStore
from app.events.writer import EventWriter, PersistFailed
from app.projections import counts, permissions, runs
from tests.core.helpers import dump, end, fire, fire_cmd, now, runner

# ----------------------------------------------------------------- decisions


def test_a_freed_session_starts_the_first_queued_run_not_the_last() -> None:
    state = SessionState(stream_id=uuid4(), version=5, opened=True, active_run="a", queue=("b", "c", "d"))
    events = release_run.decide(
        state, ReleaseRun(stream_id=state.stream_id, at=now(), run_id="a", outcome="x", turn=[])
    )
    activated = [e for e in events if isinstance(e, RunActivated)]
    assert [e.run_id for e in activated] == ["b"]
    after = state
    for event in events:
        from app.events.session import evolve

        after = evolve(after, event)
    assert after.active_run == "b" and after.queue == ("c", "d")


def finished_run() -> RunState:
    run_id = uuid4()
    from app.commands import finish_run, fire_run
    from app.commands.finish_run import FinishRun

    state = fold(run_id, fire_run.decide(RunState(run_id), fire_cmd(run_id)))
    ask = AskPermission(
        run_id=run_id, at=now(), question_id="q1", tool="bash", call_id="c", arguments="{}", expires_at=""
    )
    state = fold(
        run_id, [*fire_run.decide(RunState(run_id), fire_cmd(run_id)), *ask_permission.decide(state, ask)]
    )
    done = finish_run.decide(
        state, FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1)
    )
    assert done
    for event in done:
        from app.events.run import evolve

        state = evolve(state, event)
    assert state.finished
    return state


def test_a_finished_run_takes_no_content() -> None:
    state = finished_run()
    assert decide_content(state, AppendContent(run_id=state.run_id, at=now(), text="late")) == ()


def test_a_finished_run_takes_no_permission_question() -> None:
    state = finished_run()
    ask = AskPermission(
        run_id=state.run_id,
        at=now(),
        question_id="q2",
        tool="bash",
        call_id="c2",
        arguments="{}",
        expires_at="",
    )
    assert ask_permission.decide(state, ask) == ()


def test_a_finished_run_takes_no_answer_to_its_open_question() -> None:
    state = finished_run()
    # asked, never answered, then the run ended: its end closed the question (run_ended)
    assert not state.open_questions and "q1" in state.decided_questions
    answer = DecidePermission(
        run_id=state.run_id, at=now(), question_id="q1", decision="allow", decided_by="operator"
    )
    assert decide_answer(state, answer) == ()
    # a store written before runs closed their questions: one stays open after `Finished`
    legacy = msgspec.structs.replace(state, open_questions=frozenset({"q1"}))
    assert decide_answer(legacy, answer) == ()


def test_a_decided_question_is_closed_in_the_state_and_takes_no_second_answer() -> None:
    run_id = uuid4()
    from app.commands import fire_run

    events = list(fire_run.decide(RunState(run_id), fire_cmd(run_id)))
    state = fold(run_id, events)
    ask = AskPermission(
        run_id=run_id, at=now(), question_id="q", tool="bash", call_id="c", arguments="{}", expires_at=""
    )
    events += ask_permission.decide(state, ask)
    state = fold(run_id, events)
    assert state.open_questions == {"q"}
    answer = DecidePermission(
        run_id=run_id, at=now(), question_id="q", decision="allow", decided_by="operator"
    )
    events += decide_answer(state, answer)
    state = fold(run_id, events)
    assert state.open_questions == frozenset() and state.decided_questions == {"q"}
    assert decide_answer(state, answer) == ()  # the first answer wins


def test_a_decided_question_leaves_the_pending_list(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    run_id = fire(store)
    for question, decision in (("q-allow", "allow"), ("q-deny", "deny"), ("q-open", None)):
        state = fold(run_id, store.stream(run_id))
        ask = AskPermission(
            run_id=run_id,
            at=now(),
            question_id=question,
            tool="bash",
            call_id=question,
            arguments="{}",
            expires_at="",
        )
        store.save(ask_permission.decide(state, ask))
        if decision:
            state = fold(run_id, store.stream(run_id))
            answer = DecidePermission(
                run_id=run_id, at=now(), question_id=question, decision=decision, decided_by="operator"
            )
            store.save(decide_answer(state, answer))
    r = runner(store, tmp_path)
    r.catch_up()
    assert [q["question_id"] for q in permissions.pending_questions(r.read_conn)] == ["q-open"]
    assert permissions.get_question(r.read_conn, "q-allow")["status"] == "allowed"  # type: ignore[index]
    assert permissions.get_question(r.read_conn, "q-deny")["status"] == "denied"  # type: ignore[index]
    end(store, run_id)
    r.catch_up()
    assert permissions.pending_questions(r.read_conn) == []  # a question cannot outlive its run
    r.close()


# ----------------------------------------------------------------- executor conflicts


def behind_the_back(store: EventStore, run_id: uuid4) -> None:  # type: ignore[valid-type]
    """Another process appends the next version of a run (an operator's question, say)."""
    state = fold(run_id, store.stream(run_id))
    ask = AskPermission(
        run_id=run_id, at=now(), question_id="other", tool="bash", call_id="o", arguments="{}", expires_at=""
    )
    store.save(ask_permission.decide(state, ask))


async def executor_with_a_cached_run(tmp_path: Path) -> tuple[EventStore, EventWriter, Executor, uuid4]:  # type: ignore[valid-type]
    store = EventStore(tmp_path / "events.db")
    writer = EventWriter(store)
    writer.start()
    executor = Executor(store, writer)
    run_id = uuid4()
    await executor.execute(fire_cmd(run_id), durable=True)  # the executor now caches version 1
    behind_the_back(store, run_id)  # version 2 is taken behind its back
    return store, writer, executor, run_id


def test_a_durable_command_that_conflicts_is_reloaded_and_decided_again(tmp_path: Path) -> None:
    async def scenario() -> list:
        store, writer, executor, run_id = await executor_with_a_cached_run(tmp_path)
        events = await executor.execute(AppendContent(run_id=run_id, at=now(), text="hi"), durable=True)
        assert [e.originator_version for e in events] == [3]
        await writer.close()
        return store.stream(run_id)

    stream = asyncio.run(scenario())
    assert [type(e) for e in stream] == [Fired, PermissionAsked, ContentAppended]


def test_a_background_command_that_conflicts_is_decided_again_not_lost(tmp_path: Path) -> None:
    async def scenario() -> list:
        store, writer, executor, run_id = await executor_with_a_cached_run(tmp_path)
        await executor.execute(AppendContent(run_id=run_id, at=now(), text="hi"))  # not durable
        deadline = time.monotonic() + 10
        while len(store.stream(run_id)) < 3 and time.monotonic() < deadline:
            await writer.flush(1)
            await asyncio.sleep(0)  # let the re-decide task run
        await writer.close()
        return store.stream(run_id)

    stream = asyncio.run(scenario())
    assert [type(e) for e in stream] == [Fired, PermissionAsked, ContentAppended]
    assert [e.originator_version for e in stream] == [1, 2, 3]


def test_two_admissions_race_and_the_loser_queues(tmp_path: Path) -> None:
    """Sessions are never cached: a stale admission reloads and queues behind the winner."""

    async def scenario() -> SessionState:
        store = EventStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        stream_id = session_uuid("s")
        admit = {
            "stream_id": stream_id,
            "session_id": "s",
            "model": "m",
            "requester": "",
            "max_queue_depth": 4,
        }
        # the other process admits first, from the same (empty) state
        store.save(
            admit_run.decide(
                SessionState(stream_id), AdmitRun(at=now(), run_id="first", queued_run_id="q1", **admit)
            )
        )
        await executor.execute(AdmitRun(at=now(), run_id="second", queued_run_id="q2", **admit), durable=True)
        await writer.close()
        return session_fold(stream_id, store.stream(stream_id))

    state = asyncio.run(scenario())
    assert state.active_run == "first" and state.queue == ("q2",)


# ----------------------------------------------------------------- writer


def test_one_conflict_fails_only_its_own_submission_in_a_batch(tmp_path: Path) -> None:
    async def scenario() -> tuple[EventStore, list]:
        store = EventStore(tmp_path / "events.db")
        taken = uuid4()
        store.save([fold_fire(taken)])  # version 1 of `taken` exists already
        writer = EventWriter(store)
        writer.start()
        fresh = [fold_fire(uuid4()) for _ in range(3)]
        # submitted in one go: the writer saves them as one batch
        futures = [writer.submit([fresh[0]]), writer.submit([fold_fire(taken)]), writer.submit(fresh[1:])]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await writer.close()
        return store, [results, fresh]

    store, (results, fresh) = asyncio.run(scenario())
    assert isinstance(results[1], IntegrityError)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert all(len(store.stream(e.originator_id)) == 1 for e in fresh)


def fold_fire(run_id):  # type: ignore[no-untyped-def]
    from app.commands import fire_run

    return fire_run.decide(RunState(run_id), fire_cmd(run_id))[0]


def test_the_outbox_drops_the_oldest_events_when_full(tmp_path: Path) -> None:
    switch = tmp_path / "fail"
    switch.touch()

    async def scenario() -> tuple[list, list]:
        store = FaultInjectingStore(tmp_path / "events.db", switch)
        writer = EventWriter(store, outbox_limit=2)
        writer.start()
        events = [fold_fire(uuid4()) for _ in range(3)]
        futures = [writer.submit([events[0]])]
        while not writer.state.degraded:  # the first save has failed: the outbox holds it
            await asyncio.sleep(0.01)
        futures += [writer.submit([e]) for e in events[1:]]  # one over the limit
        switch.unlink()
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 20)
        await writer.close()
        assert writer.state.overflowed_events == 1
        return results, [len(store.stream(e.originator_id)) for e in events]

    results, saved = asyncio.run(scenario())
    assert isinstance(results[0], RuntimeError) and "overflowed" in str(results[0])
    assert saved == [0, 1, 1]


@pytest.mark.parametrize("wait_s", [0.0, 0.3])
def test_durable_saves_fail_after_the_configured_wait_while_the_store_fails(
    tmp_path: Path, wait_s: float
) -> None:
    switch = tmp_path / "fail"
    switch.touch()

    async def scenario() -> float:
        writer = EventWriter(FaultInjectingStore(tmp_path / "events.db", switch), unavailable_wait_s=wait_s)
        writer.start()
        started = time.monotonic()
        with pytest.raises(PersistFailed, match="injected append fault"):
            await asyncio.wait_for(writer.submit([fold_fire(uuid4())], durable=True), 10)
        elapsed = time.monotonic() - started
        switch.unlink()
        await writer.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert wait_s <= elapsed < wait_s + 2.0


def test_a_durable_save_waits_out_a_short_store_failure(tmp_path: Path) -> None:
    switch = tmp_path / "fail"
    switch.touch()

    async def scenario() -> int:
        store = FaultInjectingStore(tmp_path / "events.db", switch)
        writer = EventWriter(store, unavailable_wait_s=30)
        writer.start()
        event = fold_fire(uuid4())
        done = writer.submit([event], durable=True)
        while not writer.state.degraded:
            await asyncio.sleep(0.01)
        switch.unlink()  # the store comes back well within the wait
        await asyncio.wait_for(done, 20)
        await writer.close()
        return len(store.stream(event.originator_id))

    assert asyncio.run(scenario()) == 1


def test_unavailable_wait_s_is_read_from_options_store(tmp_path: Path) -> None:
    from app.config import load_settings

    assert (
        load_settings(
            cwd=tmp_path, env={"BMO_GLOBAL_CONFIG": str(tmp_path / "none")}
        ).options.store.unavailable_wait_s
        == 5.0
    )
    (tmp_path / ".git").mkdir()
    (tmp_path / "bmo.toml").write_text("[options.store]\nunavailable_wait_s = 0.5\n")
    settings = load_settings(cwd=tmp_path, env={"BMO_GLOBAL_CONFIG": str(tmp_path / "none")})
    assert settings.options.store.unavailable_wait_s == 0.5


# ----------------------------------------------------------------- projector


def test_two_projectors_on_one_store_count_every_run_once(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    a, b = runner(store, tmp_path), runner(store, tmp_path)  # both start at position 0
    ids = [fire(store) for _ in range(3)]
    a.catch_up()
    b.catch_up()  # must start from the tracking row, not from its own stale position
    ids += [fire(store) for _ in range(2)]
    b.step()
    a.step()
    assert counts.route_counts(a.read_conn) == {"chat_completions": len(ids)}
    assert runs.run_count(a.read_conn) == len(ids)
    a.close()
    b.close()


class Crash(Exception):
    pass


def test_a_crash_between_rows_and_tracking_applies_nothing(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    for _ in range(3):
        end(store, fire(store))

    def crash() -> None:
        raise Crash

    crashing = runner(store, tmp_path, between_rows_and_tracking=crash)
    with pytest.raises(Crash):
        crashing.step()
    crashing.close()
    restarted = runner(store, tmp_path)
    restarted.catch_up()
    clean = runner(store, tmp_path / "clean")
    clean.catch_up()
    assert counts.route_counts(restarted.read_conn) == {"chat_completions": 3}
    assert dump(restarted) == dump(clean)
    restarted.close()
    clean.close()


def test_open_runs_are_never_pruned_and_ended_ones_are(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    open_ids = [fire(store) for _ in range(3)]
    for _ in range(3):
        end(store, fire(store))
    r = runner(store, tmp_path, ledger_capacity=1)
    r.catch_up()
    kept = {row[0] for row in r.read_conn.execute("SELECT request_id FROM openai_compat_runs")}
    assert {i.hex for i in open_ids} <= kept and len(kept) == 4  # the open ones and the newest
    for run_id in open_ids:
        end(store, run_id)
    r.catch_up()
    assert runs.run_count(r.read_conn) == 1  # once ended they go
    orphans = r.read_conn.execute(
        "SELECT count(*) FROM openai_compat_run_events e WHERE e.request_id IN (?, ?, ?)",
        tuple(i.hex for i in open_ids[:3]),
    ).fetchone()[0]
    assert orphans == 0
    r.close()


def test_the_sweep_finishes_runs_beyond_the_ledger_capacity(tmp_path: Path) -> None:
    import io

    from app.projections.db import read_db_path
    from app.recovery import sweep_interrupted
    from app.telemetry import Records

    store = EventStore(tmp_path / "events.db")
    open_ids = [fire(store, session_id=f"s{i}") for i in range(3)]
    end(store, fire(store))
    r = runner(store, tmp_path, ledger_capacity=1)
    r.catch_up()  # the live projector, before the crash
    r.close()
    records = Records(tmp_path / "log.jsonl", stderr=io.StringIO())
    swept = sweep_interrupted(store, read_db_path(tmp_path), records, capacity=1)
    assert sorted(swept) == sorted(i.hex for i in open_ids)
    assert all(fold(i, store.stream(i)).finished for i in open_ids)


def test_the_executor_caches_open_runs_only_and_forgets_on_demand(tmp_path: Path) -> None:
    from app.commands.finish_run import FinishRun

    async def scenario() -> None:
        store = EventStore(tmp_path / "events.db")
        writer = EventWriter(store)
        writer.start()
        executor = Executor(store, writer)
        kept, ended = uuid4(), uuid4()
        for run_id in (kept, ended):
            await executor.execute(fire_cmd(run_id), durable=True)
        assert {s.run_id for s in executor.live_runs()} == {kept, ended}
        finish = FinishRun(run_id=ended, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1)
        await executor.execute(finish, durable=True)
        assert [s.run_id for s in executor.live_runs()] == [kept]  # a finished run leaves the cache
        executor.forget(kept)
        assert executor.live_runs() == []
        assert (await executor.state_of(kept)).version == 1  # reloaded from the store
        await writer.close()

    asyncio.run(scenario())


def test_a_durable_command_fails_with_persist_failed_while_the_store_fails(tmp_path: Path) -> None:
    switch = tmp_path / "fail"
    switch.touch()

    async def scenario() -> None:
        store = FaultInjectingStore(tmp_path / "events.db", switch)
        writer = EventWriter(store, unavailable_wait_s=0)
        writer.start()
        executor = Executor(store, writer)
        with pytest.raises(PersistFailed):
            await asyncio.wait_for(executor.execute(fire_cmd(uuid4()), durable=True), 10)
        switch.unlink()
        await writer.close()

    asyncio.run(scenario())
