"""The read models' queries answer what the ledger, the TUI and the permissions page ask.

In-process on a real store and projector: runs fired and ended through their commands,
projected, then read back through the public query functions of `app/projections`
(paging cursor, filters, operator traffic, timelines, question rows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from uuid import UUID, uuid4

import msgspec.structs as structs

from app.commands import ask_permission, finish_run
from app.commands.ask_permission import AskPermission
from app.commands.decide_permission import DecidePermission
from app.commands.decide_permission import decide as decide_answer
from app.commands.finish_run import FinishRun
from app.events.run import fold
from app.events.store import EventStore
from app.projections import permissions, runs
from tests.core.helpers import end, fire, now, runner


def fired(store: EventStore, n: int, route: str = "chat_completions", session: str = "") -> list[UUID]:
    return [fire(store, session, route) for _ in range(n)]


def test_runs_page_newest_first_with_a_cursor_to_the_next_page(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    ids = [i.hex for i in fired(store, 5)]
    r = runner(store, tmp_path)
    r.catch_up()
    page, cursor = runs.list_runs(r.read_conn, limit=2)
    assert [row["request_id"] for row in page] == ids[::-1][:2]
    assert cursor == page[-1]["seq"]
    page2, cursor2 = runs.list_runs(r.read_conn, limit=2, before_seq=cursor)
    assert [row["request_id"] for row in page2] == ids[::-1][2:4]
    page3, cursor3 = runs.list_runs(r.read_conn, limit=2, before_seq=cursor2)
    assert [row["request_id"] for row in page3] == ids[:1]
    assert cursor3 is None  # the last page has no next
    exact, none_more = runs.list_runs(r.read_conn, limit=5)
    assert len(exact) == 5 and none_more is None  # exactly `limit` rows left: no next page
    default, _ = runs.list_runs(r.read_conn)
    assert len(default) == 5
    r.close()


def test_the_default_page_is_fifty_runs(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    fired(store, 52)
    r = runner(store, tmp_path)
    r.catch_up()
    page, cursor = runs.list_runs(r.read_conn)
    assert len(page) == 50 and cursor == page[-1]["seq"]
    r.close()


def test_runs_filter_by_column_and_by_operator_traffic(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    chat = fired(store, 2, session="s1")
    polls = fired(store, 2, route="posture")
    other = fired(store, 1, session="s2")
    r = runner(store, tmp_path)
    r.catch_up()

    def ids(**kw: object) -> set[str]:
        return {row["request_id"] for row in runs.list_runs(r.read_conn, **kw)[0]}  # type: ignore[arg-type]

    assert ids(filters={"session_id": "s1"}) == {u.hex for u in chat}
    assert ids(filters={"session_id": "s1", "route": "posture"}) == set()
    assert ids(traffic="client") == {u.hex for u in chat + other}
    assert ids(traffic="operator") == {u.hex for u in polls}
    assert ids(traffic="client", filters={"session_id": "s2"}) == {other[0].hex}
    assert ids(traffic="client", before_seq=runs.get_run(r.read_conn, other[0].hex)["seq"]) == {  # type: ignore[index]
        u.hex for u in chat
    }
    r.close()


def test_a_run_row_has_real_booleans_and_a_missing_run_is_none(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    with_session, without = fire(store, "s1"), fire(store)
    r = runner(store, tmp_path)
    r.catch_up()
    row = runs.get_run(r.read_conn, with_session.hex)
    assert row is not None
    assert row["stream"] is False and row["is_session_reuse"] is True
    assert runs.get_run(r.read_conn, without.hex)["is_session_reuse"] is False  # type: ignore[index]
    listed = runs.list_runs(r.read_conn)[0]
    assert all(isinstance(x["stream"], bool) and isinstance(x["is_session_reuse"], bool) for x in listed)
    assert runs.get_run(r.read_conn, "0" * 32) is None
    r.close()


def test_a_run_timeline_lists_its_events_in_order_after_a_version(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    run_id = fire(store)
    end(store, run_id)
    r = runner(store, tmp_path)
    r.catch_up()
    timeline = runs.run_events(r.read_conn, run_id.hex)
    assert [(e["version"], e["type"]) for e in timeline] == [(1, "Fired"), (2, "Finished")]
    assert set(timeline[0]) == {"version", "seq", "type", "at", "data"}
    assert timeline[0]["seq"] < timeline[1]["seq"]
    assert timeline[0]["at"] and timeline[1]["data"]["outcome"] == "final_answer"
    assert [e["version"] for e in runs.run_events(r.read_conn, run_id.hex, after_version=1)] == [2]
    assert runs.run_count(r.read_conn) == 1
    r.close()


def test_recent_outcomes_are_the_last_ended_client_runs(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    first, second, poll, still_open = fire(store), fire(store), fire(store, route="posture"), fire(store)
    end(store, first, "final_answer")
    end(store, poll, "final_answer")
    end(store, second, "error_500")
    r = runner(store, tmp_path)
    r.catch_up()
    recent = runs.recent_outcomes(r.read_conn)
    assert [(x["request_id"], x["outcome"]) for x in recent] == [
        (second.hex, "error_500"),
        (first.hex, "final_answer"),
    ]
    assert all(x["elapsed_ms"] == 1.0 for x in recent)
    assert runs.recent_outcomes(r.read_conn, n=1)[0]["request_id"] == second.hex
    assert still_open.hex not in {x["request_id"] for x in recent}
    r.close()


def test_a_run_is_found_by_an_id_prefix(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    ids = sorted(u.hex for u in fired(store, 3))
    r = runner(store, tmp_path)
    r.catch_up()
    assert runs.find_request_ids(r.read_conn, ids[0]) == [ids[0]]
    assert runs.find_request_ids(r.read_conn, ids[1][:8].upper()) == [ids[1]]
    dashed = str(UUID(hex=ids[2]))[:13]  # 8 hex, a dash, 4 hex
    assert runs.find_request_ids(r.read_conn, dashed) == [ids[2]]
    assert runs.find_request_ids(r.read_conn, "") == []
    assert runs.find_request_ids(r.read_conn, "xyz") == []
    assert runs.find_request_ids(r.read_conn, "", limit=1) == []
    r.close()


def ask(store: EventStore, run_id: UUID, question: str) -> None:
    state = fold(run_id, store.stream(run_id))
    cmd = AskPermission(
        run_id=run_id,
        at=now(),
        question_id=question,
        tool="bash",
        call_id=f"call-{question}",
        arguments='{"command": "ls"}',
        expires_at="2030-01-01T00:00:00+00:00",
    )
    store.save(ask_permission.decide(state, cmd))


def test_a_question_row_holds_the_question_then_its_answer(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    run_id = fire(store, "s1")
    ask(store, run_id, "q1")
    r = runner(store, tmp_path)
    r.catch_up()
    q = permissions.get_question(r.read_conn, "q1")
    assert q is not None
    assert (q["question_id"], q["request_id"], q["tool"], q["call_id"]) == (
        "q1",
        run_id.hex,
        "bash",
        "call-q1",
    )
    assert q["arguments"] == '{"command": "ls"}' and q["expires_at"] == "2030-01-01T00:00:00+00:00"
    assert q["status"] == "pending" and q["asked_at"] and q["session_id"] == "s1"
    assert permissions.pending_questions(r.read_conn) == [q]
    state = fold(run_id, store.stream(run_id))
    answer = DecidePermission(
        run_id=run_id,
        at=now(),
        question_id="q1",
        decision="allow",
        decided_by="operator",
        requester="alice",
        decided_via="tui",
        scope="session",
    )
    store.save(decide_answer(state, answer))
    r.catch_up()
    q = permissions.get_question(r.read_conn, "q1")
    assert q is not None
    assert (q["status"], q["decided_by"], q["requester"], q["decided_via"], q["scope"]) == (
        "allowed",
        "operator",
        "alice",
        "tui",
        "session",
    )
    assert q["decided_at"] >= q["asked_at"]
    assert permissions.get_question(r.read_conn, "no-such-question") is None
    r.close()


def test_a_question_open_when_its_run_ends_is_denied_as_run_ended(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    run_id, other = fire(store), fire(store)
    ask(store, run_id, "q-open")
    ask(store, other, "q-other")
    end(store, run_id)
    r = runner(store, tmp_path)
    r.catch_up()
    q = permissions.get_question(r.read_conn, "q-open")
    assert q is not None and (q["status"], q["decided_via"]) == ("denied", "run_ended") and q["decided_at"]
    assert permissions.get_question(r.read_conn, "q-other")["status"] == "pending"  # type: ignore[index]
    assert [x["question_id"] for x in permissions.pending_questions(r.read_conn)] == ["q-other"]
    r.close()


def test_a_question_an_older_run_end_left_pending_is_closed(tmp_path: Path) -> None:
    """Older streams: `Finished` without the run_ended answer; the read model still closes the question."""
    store = EventStore(tmp_path / "events.db")
    run_id, other = fire(store), fire(store)
    ask(store, run_id, "q-old")
    ask(store, other, "q-other")
    state = structs.replace(fold(run_id, store.stream(run_id)), open_questions=frozenset())
    cmd = FinishRun(run_id=run_id, at=now(), outcome="final_answer", status_code=200, elapsed_ms=1.0)
    store.save(finish_run.decide(state, cmd))
    r = runner(store, tmp_path)
    r.catch_up()
    q = permissions.get_question(r.read_conn, "q-old")
    assert q is not None and q["status"] == "closed" and q["decided_at"] and q["decided_by"] is None
    assert permissions.get_question(r.read_conn, "q-other")["status"] == "pending"  # type: ignore[index]
    r.close()


def test_route_counts_and_the_top_user_agents(tmp_path: Path) -> None:
    from app.commands.fire_run import decide as decide_fire
    from app.events.run import RunState
    from app.projections import counts
    from tests.core.helpers import fire_cmd

    store = EventStore(tmp_path / "events.db")
    agents = {"ua-a": 1, "ua-b": 2, "ua-c": 3, "ua-d": 4, "ua-e": 5, "ua-f": 6, "ua-g": 6}
    for ua, n in agents.items():
        for _ in range(n):
            run_id = uuid4()
            cmd = dataclasses.replace(fire_cmd(run_id), client_ua=ua)
            store.save(decide_fire(RunState(run_id), cmd))
    fire(store, route="posture")
    r = runner(store, tmp_path)
    r.catch_up()
    assert counts.route_counts(r.read_conn) == {"chat_completions": sum(agents.values()), "posture": 1}
    top = counts.top_user_agents(r.read_conn)
    assert top == [
        {"user_agent": "ua-f", "count": 6},
        {"user_agent": "ua-g", "count": 6},
        {"user_agent": "ua-e", "count": 5},
        {"user_agent": "ua-d", "count": 4},
        {"user_agent": "ua-c", "count": 3},
    ]
    assert counts.top_user_agents(r.read_conn, n=1) == top[:1]
    r.close()


def fire_as(store: EventStore, run_id: UUID) -> UUID:
    from app.commands.fire_run import decide as decide_fire
    from app.events.run import RunState
    from tests.core.helpers import fire_cmd

    store.save(decide_fire(RunState(run_id), fire_cmd(run_id)))
    return run_id


def test_an_id_prefix_finds_every_run_under_it_at_most_eleven(tmp_path: Path) -> None:
    """Eleven are enough to say "ambiguous" and list ten; digits and letters after the prefix alike."""
    store = EventStore(tmp_path / "events.db")
    under = [fire_as(store, UUID(hex=f"ab{c}" + "0" * 29)).hex for c in "0123456789abcdef"]
    fire_as(store, UUID(hex="ac" + "0" * 30))
    r = runner(store, tmp_path)
    r.catch_up()
    assert runs.find_request_ids(r.read_conn, "ab") == sorted(under)[:11]
    assert runs.find_request_ids(r.read_conn, "abe", limit=5) == [under[14]]
    assert runs.find_request_ids(r.read_conn, "ab", limit=20) == sorted(under)
    r.close()


def test_recent_outcomes_are_five_by_default(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    ids = [fire(store) for _ in range(7)]
    for run_id in ids:
        end(store, run_id)
    r = runner(store, tmp_path)
    r.catch_up()
    assert [x["request_id"] for x in runs.recent_outcomes(r.read_conn)] == [u.hex for u in ids[::-1][:5]]
    r.close()
