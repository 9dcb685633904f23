"""Given / when / then on the pure session stream and the transcript helpers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.agent.transcript import (
    Divergence,
    follow_client,
    history_for,
    message_from_dict,
    message_to_dict,
    split_turn,
)
from app.commands import admit_run, drop_queued_run, follow_history, release_run
from app.commands.admit_run import AdmitRun
from app.commands.drop_queued_run import DropQueuedRun
from app.commands.follow_history import FollowClientHistory
from app.commands.release_run import ReleaseRun
from app.errors import SessionQueueFull
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


def test_dropping_a_queued_run_and_following_the_clients_history() -> None:
    state = apply(SessionState(SID), admit(SessionState(SID), "r1"))
    state = apply(state, admit(state, "x", queued="q1"))
    dropped = drop_queued_run.decide(
        state, DropQueuedRun(stream_id=SID, at=AT, run_id="q1", reason="interrupted")
    )
    state = apply(state, dropped)
    assert state.queue == ()
    assert drop_queued_run.decide(state, DropQueuedRun(stream_id=SID, at=AT, run_id="q1", reason="x")) == ()
    follow = FollowClientHistory(
        stream_id=SID, at=AT, run_id="r1", kept=0, dropped=0, messages=[{"role": "user", "content": "a"}]
    )
    replaced = apply(state, follow_history.decide(state, follow))
    assert replaced.transcript == ({"role": "user", "content": "a"},)
    other = FollowClientHistory(stream_id=SID, at=AT, run_id="q9", kept=0, dropped=0, messages=[])
    assert follow_history.decide(state, other) == ()  # only the active run rewrites the transcript


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
    # the client's history disagrees with the transcript: the client's conversation wins
    assert [m.content for m in history_for(server, earlier, new)] == ["be brief", "a", "b", "c", "d"]
    assert [m.content for m in history_for((), earlier, new)] == ["be brief", "a", "b", "c", "d"]
    # only the new turn sent: the transcript holds the history
    assert [m.content for m in history_for(server, (), new)] == ["A", "B", "c", "d"]


def _msgs(*pairs: tuple[str, str]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role, content) for role, content in pairs)


def test_given_a_transcript_when_the_client_agrees_then_the_transcripts_messages_are_used() -> None:
    transcript = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]
    shown = '<details type="tool_calls" done="true" id="x">\n<summary>Tool Executed</summary>\n</details>\na1'
    followed = follow_client(transcript, _msgs(("user", "u1"), ("assistant", shown)), _msgs(("user", "u2")))
    assert followed.diverged is None
    assert [m.content for m in followed.messages] == ["u1", "a1", "u2"]


def test_given_a_transcript_when_the_client_regenerates_or_edits_then_the_client_wins() -> None:
    transcript = [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    regen = follow_client(transcript, _msgs(("user", "u1"), ("assistant", "a1")), _msgs(("user", "u2")))
    assert regen.diverged == Divergence(kept=3, dropped=1, client_messages=3)
    assert [m.content for m in regen.messages] == ["u1", "a1", "u2"]
    assert regen.base(_msgs(("user", "u2"))) == transcript[:2]
    first = follow_client(transcript, (), _msgs(("user", "u1")))
    assert first.diverged == Divergence(kept=1, dropped=3, client_messages=1)
    edit = follow_client(transcript, (), _msgs(("user", "u1 edited")))
    assert edit.diverged is None  # not a prefix: a client that sends only its new turn
    edited = follow_client(transcript, (), _msgs(("user", "u1 edited")), full_history=True)
    assert edited.diverged == Divergence(kept=0, dropped=4, client_messages=1)
    assert [m.content for m in edited.messages] == ["u1 edited"]
    branch = follow_client(
        transcript, _msgs(("user", "u1 edited"), ("assistant", "x")), _msgs(("user", "u3"))
    )
    assert branch.diverged == Divergence(kept=0, dropped=4, client_messages=3)


def test_messages_round_trip_through_plain_json() -> None:
    message = ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "get_time", "{}"),))
    assert message_from_dict(message_to_dict(message)) == message
    tool = ChatMessage("tool", "12:00", tool_call_id="c1", name="get_time")
    assert message_from_dict(message_to_dict(tool)) == tool
