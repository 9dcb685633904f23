"""Given / when / then on the pure run stream: decide, evolve, project."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

from app.commands import (
    AppendContent,
    CancelRun,
    FinishRun,
    FireRun,
    RecordModelCall,
    StartRun,
    append_content,
    cancel_run,
    finish_run,
    fire_run,
    record_model_call,
    start_run,
)
from app.commands.record_tool_call import RecordToolCall, args_digest
from app.commands.record_tool_call import decide as decide_tool
from app.events.run import ContentAppended, Finished, Fired, RunState, Started, evolve, fold
from app.projections import counts, runs
from app.projections.posture import label
from app.projections.rows import Increment, Insert, Update

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fire(run_id, **overrides):  # type: ignore[no-untyped-def]
    fields = dict(
        run_id=run_id,
        at=AT,
        session_id="s1",
        route="chat_completions",
        model="bmo/local",
        stream=True,
        tool_policy="chat_only",
        ambiguity_action="ask",
        is_session_reuse=True,
        client_ua="ua",
    )
    fields.update(overrides)
    return FireRun(**fields)


def apply(state: RunState, events) -> RunState:  # type: ignore[no-untyped-def]
    for event in events:
        state = evolve(state, event)
    return state


def test_given_a_new_run_when_fired_then_one_fired_event_at_version_1() -> None:
    run_id = uuid4()
    events = fire_run.decide(RunState(run_id), fire(run_id))
    assert len(events) == 1 and isinstance(events[0], Fired)
    assert events[0].originator_version == 1 and events[0].originator_id == run_id
    assert events[0].session_id == "s1" and events[0].timestamp == AT


def test_given_a_fired_run_when_fired_again_then_nothing_happens() -> None:
    run_id = uuid4()
    state = apply(RunState(run_id), fire_run.decide(RunState(run_id), fire(run_id)))
    assert fire_run.decide(state, fire(run_id)) == ()


def test_given_an_unfired_run_then_work_commands_decide_nothing() -> None:
    state = RunState(uuid4())
    assert start_run.decide(state, StartRun(run_id=state.run_id, at=AT, model="m", message_count=1)) == ()
    assert append_content.decide(state, AppendContent(run_id=state.run_id, at=AT, text="x")) == ()
    assert (
        finish_run.decide(
            state,
            FinishRun(run_id=state.run_id, at=AT, outcome="final_answer", status_code=200, elapsed_ms=1),
        )
        == ()
    )


def test_a_full_run_folds_usage_and_the_first_terminal_action_wins() -> None:
    run_id = uuid4()
    state = RunState(run_id)
    state = apply(state, fire_run.decide(state, fire(run_id)))
    state = apply(
        state, start_run.decide(state, StartRun(run_id=run_id, at=AT, model="bmo/local", message_count=2))
    )
    for step in (1, 2):
        cmd = RecordModelCall(
            run_id=run_id,
            at=AT,
            model="local",
            step=step,
            prompt_tokens=10,
            completion_tokens=5,
            latency_ms=1.23456,
            finish_reason="stop",
        )
        state = apply(state, record_model_call.decide(state, cmd))
    state = apply(state, append_content.decide(state, AppendContent(run_id=run_id, at=AT, text="hello")))
    finish = FinishRun(run_id=run_id, at=AT, outcome="final_answer", status_code=200, elapsed_ms=12.5)
    finished = finish_run.decide(state, finish)
    assert len(finished) == 1
    event = finished[0]
    assert isinstance(event, Finished)
    assert (event.prompt_tokens, event.completion_tokens) == (20, 10)
    assert event.originator_version == state.version + 1 == 6
    state = apply(state, finished)
    assert state.finished and state.outcome == "final_answer" and not state.is_open
    again = FinishRun(run_id=run_id, at=AT, outcome="error_500", status_code=500, elapsed_ms=1)
    assert finish_run.decide(state, again) == ()
    assert cancel_run.decide(state, CancelRun(run_id=run_id, at=AT, reason="late", by="client")) == ()


def test_fold_equals_stepwise_evolve() -> None:
    run_id = uuid4()
    events = list(fire_run.decide(RunState(run_id), fire(run_id)))
    state = apply(RunState(run_id), events)
    events += start_run.decide(state, StartRun(run_id=run_id, at=AT, model="m", message_count=1))
    assert fold(run_id, events) == apply(RunState(run_id), events)


def test_empty_content_is_not_an_event_and_tool_args_are_digested_not_stored() -> None:
    run_id = uuid4()
    state = apply(RunState(run_id), fire_run.decide(RunState(run_id), fire(run_id)))
    assert append_content.decide(state, AppendContent(run_id=run_id, at=AT, text="")) == ()
    secret = '{"path": "secrets.env"}'
    cmd = RecordToolCall(
        run_id=run_id,
        at=AT,
        name="read_file",
        call_id="c1",
        arguments=secret,
        ok=True,
        duration_ms=1.0,
        step=1,
    )
    (event,) = decide_tool(state, cmd)
    assert event.args_digest == args_digest(secret) and "secrets" not in json.dumps(runs.event_data(event))


def test_project_fired_inserts_a_run_row_and_counts() -> None:
    run_id = uuid4()
    (event,) = fire_run.decide(RunState(run_id), fire(run_id))
    ops = runs.project(event, position=7)
    inserts = {op.table: op.row for op in ops if isinstance(op, Insert)}
    assert inserts["openai_compat_runs"]["request_id"] == run_id.hex
    assert inserts["openai_compat_runs"]["seq"] == 7
    assert inserts["openai_compat_run_events"]["type"] == "Fired"
    assert counts.project(event, 7) == [
        Increment("openai_compat_route_counts", ("route", "chat_completions")),
        Increment("openai_compat_user_agents", ("user_agent", "ua")),
    ]


def test_project_finished_updates_the_run_row_and_counts_nothing() -> None:
    run_id = uuid4()
    state = apply(RunState(run_id), fire_run.decide(RunState(run_id), fire(run_id)))
    (event,) = finish_run.decide(
        state,
        FinishRun(run_id=run_id, at=AT, outcome="cancelled", status_code=499, elapsed_ms=3, error="gone"),
    )
    updates = [op for op in runs.project(event, 9) if isinstance(op, Update)]
    assert updates[0].key == ("request_id", run_id.hex)
    assert updates[0].values["outcome"] == "cancelled" and updates[0].values["ended_seq"] == 9
    assert counts.project(event, 9) == []


def test_content_events_are_timeline_rows() -> None:
    run_id = uuid4()
    event = ContentAppended(
        originator_id=run_id, originator_version=3, timestamp=AT, text="hi", role="assistant"
    )
    (op,) = runs.project(event, 11)
    assert isinstance(op, Insert) and json.loads(op.row["data"]) == {"text": "hi", "role": "assistant"}


def test_started_is_a_plain_timeline_row() -> None:
    event = Started(originator_id=uuid4(), originator_version=2, timestamp=AT, model="m", message_count=1)
    assert [type(op) for op in runs.project(event, 1)] == [Insert]


def test_sidebar_label_for_each_state() -> None:
    assert label(enabled=False, tool_policy="chat_only", degraded=False) == "disabled"
    assert label(enabled=True, tool_policy="chat_only", degraded=False) == "enabled (chat_only)"
    assert label(enabled=True, tool_policy="auto_approve", degraded=False) == "enabled (auto_approve)"
    assert label(enabled=True, tool_policy="chat_only", degraded=True) == "degraded — persist failures"
    assert label(enabled=False, tool_policy="chat_only", degraded=True) == "degraded — persist failures"


def test_a_cancellation_says_who_and_at_which_step_once() -> None:
    run_id = uuid4()
    state = apply(RunState(run_id), fire_run.decide(RunState(run_id), fire(run_id)))
    cmd = RecordModelCall(
        run_id=run_id,
        at=AT,
        model="m",
        step=1,
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        finish_reason="tool_calls",
    )
    state = apply(state, record_model_call.decide(state, cmd))
    cancelled = cancel_run.decide(
        state, CancelRun(run_id=run_id, at=AT, reason="client disconnected", by="client")
    )
    assert [(e.reason, e.by, e.step) for e in cancelled] == [("client disconnected", "client", 1)]
    state = apply(state, cancelled)
    assert cancel_run.decide(state, CancelRun(run_id=run_id, at=AT, reason="again", by="server")) == ()
