"""Given / when / then on the pure session stream and the transcript helpers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.agent.transcript import history_for, message_from_dict, message_to_dict, split_turn
from app.commands import admit_run, drop_queued_run, note_turn, release_run
from app.commands.admit_run import AdmitRun, SessionQueueFull
from app.commands.drop_queued_run import DropQueuedRun
from app.commands.note_turn import NoteTurn
from app.commands.release_run import ReleaseRun
from app.events.session import (
    RunActivated,
    RunQueued,
    RunReleased,
    SessionOpened,
    SessionState,
    evolve,
    session_uuid,
)
from app.providers.base import ChatMessage, ToolCall

AT = datetime(2026, 1, 1, tzinfo=UTC)
SID = session_uuid("s")


def admit(state: SessionState, run: str, queued: str = "q", depth: int = 2) -> tuple:
    cmd = AdmitRun(
        stream_id=SID,
        at=AT,
        session_id="s",
        run_id=run,
        queued_run_id=queued,
        model="m",
        requester="",
        max_queue_depth=depth,
    )
    return admit_run.decide(state, cmd)


def apply(state: SessionState, events: tuple) -> SessionState:
    for event in events:
        state = evolve(state, event)
    return state


def test_given_a_new_session_when_a_run_is_admitted_then_it_opens_bound_and_active() -> None:
    events = admit(SessionState(SID), "r1")
    assert [type(e) for e in events] == [SessionOpened, RunActivated]
    assert [e.originator_version for e in events] == [1, 2]
    state = apply(SessionState(SID), events)
    assert state.model == "m" and state.active_run == "r1" and state.busy


def test_given_a_busy_session_then_runs_queue_in_order_until_the_depth() -> None:
    state = apply(SessionState(SID), admit(SessionState(SID), "r1"))
    (first,) = admit(state, "x", queued="q1")
    assert isinstance(first, RunQueued) and first.position == 1 and first.run_id == "q1"
    state = apply(state, (first,))
    state = apply(state, admit(state, "y", queued="q2"))
    assert state.queue == ("q1", "q2")
    with pytest.raises(SessionQueueFull):
        admit(state, "z", queued="q3")


def test_release_records_the_turn_and_activates_the_next_queued_run() -> None:
    state = apply(SessionState(SID), admit(SessionState(SID), "r1"))
    state = apply(state, admit(state, "x", queued="q1"))
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    events = release_run.decide(
        state, ReleaseRun(stream_id=SID, at=AT, run_id="r1", outcome="final_answer", turn=turn)
    )
    assert [type(e) for e in events] == [RunReleased, RunActivated] and events[1].run_id == "q1"
    state = apply(state, events)
    assert state.active_run == "q1" and state.queue == () and state.transcript == tuple(turn)
    stale = ReleaseRun(stream_id=SID, at=AT, run_id="r1", outcome="final_answer", turn=[])
    assert release_run.decide(state, stale) == ()  # released once only


def test_dropping_a_queued_run_and_noting_a_turn() -> None:
    state = apply(SessionState(SID), admit(SessionState(SID), "r1"))
    state = apply(state, admit(state, "x", queued="q1"))
    dropped = drop_queued_run.decide(
        state, DropQueuedRun(stream_id=SID, at=AT, run_id="q1", reason="interrupted")
    )
    state = apply(state, dropped)
    assert state.queue == ()
    assert drop_queued_run.decide(state, DropQueuedRun(stream_id=SID, at=AT, run_id="q1", reason="x")) == ()
    noted = note_turn.decide(
        SessionState(SID),
        NoteTurn(
            stream_id=SID,
            at=AT,
            session_id="s",
            model="m",
            requester="",
            turn=[{"role": "user", "content": "fix it"}],
        ),
    )
    assert [type(e).__name__ for e in noted] == ["SessionOpened", "TurnNoted"]


def test_the_new_turn_is_what_follows_the_last_assistant_message() -> None:
    msgs = (
        ChatMessage("system", "be brief"),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c"),
        ChatMessage("user", "d"),
    )
    earlier, new = split_turn(msgs)
    assert [m.content for m in earlier] == ["be brief", "a", "b"] and [m.content for m in new] == ["c", "d"]
    assert split_turn(msgs[:2]) == ((), msgs[:2])
    server = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
    assert [m.content for m in history_for(server, earlier, new)] == ["A", "B", "c", "d"]
    assert [m.content for m in history_for((), earlier, new)] == ["be brief", "a", "b", "c", "d"]


def test_messages_round_trip_through_plain_json() -> None:
    message = ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "get_time", "{}"),))
    assert message_from_dict(message_to_dict(message)) == message
    tool = ChatMessage("tool", "12:00", tool_call_id="c1", name="get_time")
    assert message_from_dict(message_to_dict(tool)) == tool
