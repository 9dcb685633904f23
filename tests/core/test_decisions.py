"""Every decider writes exactly the event it should: each field, each version, each timestamp.

A table of (state, command) -> expected events. Field values are distinct and
non-default, durations carry more than three decimals, so a decider that drops,
swaps or mis-rounds a field, or stamps the wrong version or time, fails here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from app.commands import (
    admit_run,
    append_content,
    cancel_run,
    decide_permission,
    drop_queued_run,
    finish_run,
    follow_history,
    note_run,
    queue_run,
    record_model_call,
    record_tool_call,
    release_run,
    start_run,
)
from app.events import run, session

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RUN = uuid4()
SES = uuid4()
OPEN = run.RunState(
    run_id=RUN, version=4, fired=True, session_id="s", model="m0", prompt_tokens=11, completion_tokens=7
)
ASKED = run.RunState(run_id=RUN, version=5, fired=True, open_questions=frozenset({"q9"}))
BUSY = session.SessionState(
    stream_id=SES, version=3, opened=True, session_id="s", model="m", active_run="a1", queue=("b2", "c3")
)
FREE = session.SessionState(stream_id=SES, version=6, opened=True, session_id="s", model="m")
NEW = session.SessionState(stream_id=SES)


def ident(stream: UUID, version: int) -> dict[str, Any]:
    return {"originator_id": stream, "originator_version": version, "timestamp": AT}


CASES: list[tuple[str, Any, Any, Any, list[Any]]] = [
    (
        "start",
        start_run.decide,
        OPEN,
        start_run.StartRun(run_id=RUN, at=AT, model="m1", message_count=3),
        [run.Started(**ident(RUN, 5), model="m1", message_count=3)],
    ),
    (
        "content",
        append_content.decide,
        OPEN,
        append_content.AppendContent(run_id=RUN, at=AT, text="hé", role="activity"),
        [run.ContentAppended(**ident(RUN, 5), text="hé", role="activity")],
    ),
    (
        "cancel",
        cancel_run.decide,
        OPEN,
        cancel_run.CancelRun(run_id=RUN, at=AT, reason="gone", by="client"),
        [run.Cancelled(**ident(RUN, 5), reason="gone", by="client", step=OPEN.steps)],
    ),
    (
        "cancel closes the open questions first",
        cancel_run.decide,
        ASKED,
        cancel_run.CancelRun(run_id=RUN, at=AT, reason="gone", by="client"),
        [
            run.PermissionDecided(
                **ident(RUN, 6),
                question_id="q9",
                decision="deny",
                decided_by="run_ended",
                requester="",
                decided_via="run_ended",
            ),
            run.Cancelled(**ident(RUN, 7), reason="gone", by="client", step=ASKED.steps),
        ],
    ),
    (
        "finish closes the open questions first",
        finish_run.decide,
        ASKED,
        finish_run.FinishRun(run_id=RUN, at=AT, outcome="cancelled", status_code=499, elapsed_ms=1.0),
        [
            run.PermissionDecided(
                **ident(RUN, 6),
                question_id="q9",
                decision="deny",
                decided_by="run_ended",
                requester="",
                decided_via="run_ended",
            ),
            run.Finished(
                **ident(RUN, 7),
                outcome="cancelled",
                status_code=499,
                elapsed_ms=1.0,
                error="",
                finish_reason="",
                prompt_tokens=0,
                completion_tokens=0,
            ),
        ],
    ),
    (
        "finish",
        finish_run.decide,
        OPEN,
        finish_run.FinishRun(
            run_id=RUN,
            at=AT,
            outcome="error_500",
            status_code=502,
            elapsed_ms=12.34567,
            error="e",
            finish_reason="length",
        ),
        [
            run.Finished(
                **ident(RUN, 5),
                outcome="error_500",
                status_code=502,
                elapsed_ms=12.346,
                error="e",
                finish_reason="length",
                prompt_tokens=11,
                completion_tokens=7,
            )
        ],
    ),
    (
        "model",
        record_model_call.decide,
        OPEN,
        record_model_call.RecordModelCall(
            run_id=RUN,
            at=AT,
            model="m2",
            step=2,
            prompt_tokens=5,
            completion_tokens=6,
            latency_ms=2.71828,
            finish_reason="tool_calls",
        ),
        [
            run.ModelCalled(
                **ident(RUN, 5),
                model="m2",
                step=2,
                prompt_tokens=5,
                completion_tokens=6,
                latency_ms=2.718,
                finish_reason="tool_calls",
            )
        ],
    ),
    (
        "tool",
        record_tool_call.decide,
        OPEN,
        record_tool_call.RecordToolCall(
            run_id=RUN,
            at=AT,
            name="bash",
            call_id="c1",
            arguments='{"a": 1}',
            ok=False,
            duration_ms=3.14159,
            step=4,
        ),
        [
            run.ToolCalled(
                **ident(RUN, 5),
                name="bash",
                call_id="c1",
                args_digest="sha256:" + hashlib.sha256(b'{"a": 1}').hexdigest()[:16],
                ok=False,
                duration_ms=3.142,
                step=4,
            )
        ],
    ),
    (
        "answer",
        decide_permission.decide,
        ASKED,
        decide_permission.DecidePermission(
            run_id=RUN, at=AT, question_id="q9", decision="deny", decided_by="timeout", requester="r"
        ),
        [
            run.PermissionDecided(
                **ident(RUN, 6), question_id="q9", decision="deny", decided_by="timeout", requester="r"
            )
        ],
    ),
    (
        "queue",
        queue_run.decide,
        OPEN,
        queue_run.QueueRun(
            run_id=RUN,
            at=AT,
            session_id="s2",
            position=2,
            by_request="r1",
            messages=[{"role": "user", "content": "x"}],
            options={"o": 1},
        ),
        [
            run.Queued(
                **ident(RUN, 5),
                session_id="s2",
                position=2,
                by_request="r1",
                messages=[{"role": "user", "content": "x"}],
                options={"o": 1},
            )
        ],
    ),
    (
        "resumed",
        note_run.decide_resumed,
        OPEN,
        note_run.MarkResumed(run_id=RUN, at=AT, resumed_run="r0"),
        [run.Resumed(**ident(RUN, 5), resumed_run="r0")],
    ),
    (
        "ignored",
        note_run.decide_ignore,
        OPEN,
        note_run.IgnoreRequester(run_id=RUN, at=AT, peer="10.0.0.1", headers=["x-a"]),
        [run.RequesterIgnored(**ident(RUN, 5), peer="10.0.0.1", headers=["x-a"])],
    ),
    (
        "override",
        note_run.decide_override,
        OPEN,
        note_run.ApplyModelOverride(run_id=RUN, at=AT, bound_model="b", requested_model="q"),
        [run.ModelOverrideApplied(**ident(RUN, 5), bound_model="b", requested_model="q")],
    ),
    (
        "admit new",
        admit_run.decide,
        NEW,
        admit_run.AdmitRun(
            stream_id=SES,
            at=AT,
            session_id="s",
            run_id="r1",
            queued_run_id="q1",
            model="m",
            requester="alice",
            max_queue_depth=2,
        ),
        [
            session.SessionOpened(**ident(SES, 1), session_id="s", model="m", requester="alice"),
            session.RunActivated(**ident(SES, 2), run_id="r1", requester="alice"),
        ],
    ),
    (
        "admit busy",
        admit_run.decide,
        BUSY,
        admit_run.AdmitRun(
            stream_id=SES,
            at=AT,
            session_id="s",
            run_id="r1",
            queued_run_id="q1",
            model="m",
            requester="bob",
            max_queue_depth=3,
        ),
        [
            session.RunQueued(
                **ident(SES, 4),
                run_id="q1",
                position=3,
                requester="bob",
                messages=[],
                earlier=[],
                options={},
                fired={},
            )
        ],
    ),
    (
        "release",
        release_run.decide,
        BUSY,
        release_run.ReleaseRun(
            stream_id=SES,
            at=AT,
            run_id="a1",
            outcome="final_answer",
            turn=[{"role": "assistant", "content": "t"}],
        ),
        [
            session.RunReleased(
                **ident(SES, 4),
                run_id="a1",
                outcome="final_answer",
                turn=[{"role": "assistant", "content": "t"}],
            ),
            session.RunActivated(**ident(SES, 5), run_id="b2", requester=""),
        ],
    ),
    (
        "drop",
        drop_queued_run.decide,
        BUSY,
        drop_queued_run.DropQueuedRun(stream_id=SES, at=AT, run_id="c3", reason="why"),
        [session.QueuedRunDropped(**ident(SES, 4), run_id="c3", reason="why")],
    ),
    (
        "follow history",
        follow_history.decide,
        BUSY,
        follow_history.FollowClientHistory(
            stream_id=SES, at=AT, run_id="a1", kept=1, dropped=2, messages=[{"role": "user", "content": "u"}]
        ),
        [
            session.TranscriptReplaced(
                **ident(SES, 4), run_id="a1", kept=1, dropped=2, messages=[{"role": "user", "content": "u"}]
            )
        ],
    ),
    (
        "follow history: only the active run",
        follow_history.decide,
        BUSY,
        follow_history.FollowClientHistory(stream_id=SES, at=AT, run_id="b2", kept=0, dropped=1, messages=[]),
        [],
    ),
]


@pytest.mark.parametrize(("name", "decide", "state", "cmd", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_decider_writes_exactly_this(
    name: str, decide: Any, state: Any, cmd: Any, expected: list
) -> None:
    assert list(decide(state, cmd)) == expected


def started(state: run.RunState) -> run.RunState:
    return run.RunState(**{**{f: getattr(state, f) for f in state.__struct_fields__}, "started": True})


def queued(state: run.RunState) -> run.RunState:
    return run.RunState(**{**{f: getattr(state, f) for f in state.__struct_fields__}, "queued": True})


def test_a_run_is_queued_once_and_never_after_it_started() -> None:
    cmd = CASES[7][3]
    assert queue_run.decide(started(OPEN), cmd) == ()
    assert queue_run.decide(queued(OPEN), cmd) == ()


@pytest.mark.parametrize("decide_and_cmd", [c[1:4:2] for c in CASES[:11]], ids=[c[0] for c in CASES[:11]])
def test_no_run_decider_writes_to_an_unfired_or_finished_run(decide_and_cmd: tuple) -> None:
    decide, cmd = decide_and_cmd
    unfired = run.RunState(run_id=RUN, open_questions=frozenset({"q9"}))
    finished = run.RunState(
        run_id=RUN, version=9, fired=True, finished=True, open_questions=frozenset({"q9"})
    )
    assert decide(unfired, cmd) == () and decide(finished, cmd) == ()


def test_persistence_recovered_is_a_one_event_stream_with_its_counts() -> None:
    from app.events.system import PersistenceRecovered, persistence_recovered

    before = datetime.now(UTC)
    a, b = persistence_recovered(3, 1, 2, "disk full"), persistence_recovered(0, 0, 1, "")
    assert isinstance(a, PersistenceRecovered) and a.originator_version == 1
    assert (a.flushed_events, a.overflowed_events, a.failures, a.last_error) == (3, 1, 2, "disk full")
    assert a.originator_id != b.originator_id  # each incident its own stream: nobody contends
    assert before <= a.timestamp <= datetime.now(UTC)


def test_run_uuid_is_the_request_id() -> None:
    assert run.run_uuid(RUN.hex) == RUN
