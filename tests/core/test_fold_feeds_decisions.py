"""The state folded from a run's own events is what its next decisions see.

`tests/core/test_decisions.py` checks each decider against a hand-made state; here the
state comes from `fold` over the events the deciders wrote, so a fold that forgets a
fact (queued, started, the steps taken) shows up as a wrong next decision.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import UUID, uuid4

from app.commands import cancel_run, fire_run, queue_run, record_model_call, start_run
from app.events.run import Cancelled, RunState, fold
from tests.core.helpers import fire_cmd, now


def stream(run_id: UUID, *steps: tuple[Any, Any]) -> list[Any]:
    """Apply (decide, command) in order, each on the fold of what came before."""
    events: list[Any] = list(fire_run.decide(RunState(run_id), fire_cmd(run_id, "s1")))
    for decide, cmd in steps:
        events.extend(decide(fold(run_id, events), cmd))
    return events


def queue(run_id: UUID) -> tuple[Any, Any]:
    cmd = queue_run.QueueRun(
        run_id=run_id, at=now(), session_id="s1", position=1, by_request="r", messages=[], options={}
    )
    return queue_run.decide, cmd


def start(run_id: UUID) -> tuple[Any, Any]:
    return start_run.decide, start_run.StartRun(run_id=run_id, at=now(), model="up/m", message_count=1)


def model_call(run_id: UUID, step: int) -> tuple[Any, Any]:
    cmd = record_model_call.RecordModelCall(
        run_id=run_id,
        at=now(),
        model="up/m",
        step=step,
        prompt_tokens=3,
        completion_tokens=2,
        latency_ms=1.0,
        finish_reason="tool_calls",
    )
    return record_model_call.decide, cmd


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_run_is_queued_once() -> None:
    run_id = uuid4()
    assert kinds(stream(run_id, queue(run_id), queue(run_id))) == ["Fired", "Queued"]


def test_a_started_run_is_never_queued_and_never_started_again() -> None:
    run_id = uuid4()
    events = stream(run_id, start(run_id), queue(run_id), start(run_id))
    assert kinds(events) == ["Fired", "Started"]


def test_a_queued_run_still_starts() -> None:
    run_id = uuid4()
    assert kinds(stream(run_id, queue(run_id), start(run_id))) == ["Fired", "Queued", "Started"]


def test_a_cancellation_records_the_steps_the_run_took() -> None:
    run_id = uuid4()
    cancel = cancel_run.CancelRun(run_id=run_id, at=now(), reason="client_disconnect", by="client")
    events = stream(
        run_id, start(run_id), model_call(run_id, 1), model_call(run_id, 2), (cancel_run.decide, cancel)
    )
    cancelled = [e for e in events if isinstance(e, Cancelled)]
    assert len(cancelled) == 1 and cancelled[0].step == 2
    state = fold(run_id, events)
    assert (state.prompt_tokens, state.completion_tokens, state.steps) == (6, 4, 2)


def test_an_older_session_streams_noted_turn_joins_the_transcript() -> None:
    """`TurnNoted` is no longer written, but a store written before must still fold the same."""
    from app.events.session import RunActivated, RunReleased, TurnNoted, session_uuid
    from app.events.session import fold as session_fold

    sid = session_uuid("old")
    at = now()
    noted = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ran = [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    stream = [
        TurnNoted(originator_id=sid, originator_version=1, timestamp=at, turn=noted),
        RunActivated(originator_id=sid, originator_version=2, timestamp=at, run_id="r1", requester=""),
        RunReleased(
            originator_id=sid, originator_version=3, timestamp=at, run_id="r1", outcome="x", turn=ran
        ),
    ]
    state = session_fold(sid, stream)
    assert list(state.transcript) == [*noted, *ran] and state.version == 3 and not state.busy


def test_a_question_carries_who_fired_the_run_and_is_asked_once() -> None:
    from app.commands import ask_permission

    run_id = uuid4()
    fire = dataclasses.replace(fire_cmd(run_id, "s1"), requester="alice")
    events: list[Any] = list(fire_run.decide(RunState(run_id), fire))

    def ask(question: str) -> tuple[Any, ...]:
        cmd = ask_permission.AskPermission(
            run_id=run_id,
            at=now(),
            question_id=question,
            tool="bash",
            call_id="c",
            arguments="{}",
            expires_at="",
        )
        return ask_permission.decide(fold(run_id, events), cmd)

    asked = ask("q1")
    assert len(asked) == 1 and (asked[0].requester, asked[0].session_id) == ("alice", "s1")
    events.extend(asked)
    assert ask("q1") == ()  # the same question is not asked twice while open
