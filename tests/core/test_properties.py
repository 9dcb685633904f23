"""Properties over random command sequences (hypothesis).

Run streams: at most one terminal event and nothing after it, versions
contiguous. Session streams: FIFO queue order, a release always frees the
session or starts the oldest queued run. Projections: for random runs of
every kind (permission questions included), rows after live projection (with
a projector crashed mid-step and restarted, and a second projector on the
same store) equal rows after one full replay.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.commands import (
    append_content,
    ask_permission,
    cancel_run,
    decide_permission,
    drop_queued_run,
    finish_run,
    fire_run,
    queue_run,
    record_model_call,
    record_tool_call,
    release_run,
    start_run,
)
from app.commands.admit_run import AdmitRun
from app.commands.admit_run import decide as decide_admit
from app.errors import SessionQueueFull
from app.events import run, session
from app.events.store import EventStore
from tests.core.helpers import dump, fire_cmd, now, runner

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

QUESTIONS = ("q1", "q2")
RUN_STEPS = st.sampled_from(
    ["start", "content", "model", "tool", "ask", "decide", "cancel", "finish", "queue", "fire"]
)


def run_command(kind: str, run_id: UUID, pick: int) -> tuple[Any, Any]:
    at = now()
    q = QUESTIONS[pick % len(QUESTIONS)]
    match kind:
        case "fire":
            return fire_run.decide, fire_cmd(run_id)
        case "start":
            return start_run.decide, start_run.StartRun(run_id=run_id, at=at, model="m", message_count=1)
        case "content":
            return append_content.decide, append_content.AppendContent(run_id=run_id, at=at, text=f"t{pick}")
        case "model":
            cmd = record_model_call.RecordModelCall(
                run_id=run_id,
                at=at,
                model="m",
                step=pick,
                prompt_tokens=pick,
                completion_tokens=1,
                latency_ms=1.0,
                finish_reason="stop",
            )
            return record_model_call.decide, cmd
        case "tool":
            cmd = record_tool_call.RecordToolCall(
                run_id=run_id,
                at=at,
                name="bash",
                call_id=f"c{pick}",
                arguments="{}",
                ok=bool(pick % 2),
                duration_ms=1.0,
                step=pick,
            )
            return record_tool_call.decide, cmd
        case "ask":
            cmd = ask_permission.AskPermission(
                run_id=run_id, at=at, question_id=q, tool="bash", call_id=q, arguments="{}", expires_at=""
            )
            return ask_permission.decide, cmd
        case "decide":
            cmd = decide_permission.DecidePermission(
                run_id=run_id,
                at=at,
                question_id=q,
                decision="allow" if pick % 2 else "deny",
                decided_by="operator",
            )
            return decide_permission.decide, cmd
        case "cancel":
            return cancel_run.decide, cancel_run.CancelRun(run_id=run_id, at=at, reason="client", by="client")
        case "queue":
            cmd = queue_run.QueueRun(
                run_id=run_id, at=at, session_id="s", position=1, by_request="r", messages=[], options={}
            )
            return queue_run.decide, cmd
    cmd = finish_run.FinishRun(run_id=run_id, at=at, outcome="final_answer", status_code=200, elapsed_ms=1.0)
    return finish_run.decide, cmd


def play_run(steps: list[tuple[str, int]], run_id: UUID) -> list[Any]:
    events: list[Any] = []
    state = run.RunState(run_id)
    for kind, pick in [("fire", 0), *steps]:
        decide, cmd = run_command(kind, run_id, pick)
        new = decide(state, cmd)
        for event in new:
            state = run.evolve(state, event)
        events += new
    return events


@FAST
@given(st.lists(st.tuples(RUN_STEPS, st.integers(0, 5)), max_size=30))
def test_a_run_stream_has_one_terminal_event_at_most_and_nothing_after_it(steps: list) -> None:
    events = play_run(steps, uuid4())
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert sum(isinstance(e, run.Fired) for e in events) == 1 and isinstance(events[0], run.Fired)
    terminal = [i for i, e in enumerate(events) if isinstance(e, run.TERMINAL_EVENTS)]
    assert len(terminal) <= 1
    if terminal:
        assert terminal[0] == len(events) - 1
    state = run.fold(events[0].originator_id, events)
    decided = [e.question_id for e in events if isinstance(e, run.PermissionDecided)]
    assert len(decided) == len(set(decided))  # a question is answered once at most
    assert not state.open_questions & state.decided_questions
    assert sum(isinstance(e, run.Cancelled) for e in events) <= 1


SESSION_STEPS = st.lists(
    st.tuples(st.sampled_from(["admit", "release", "release_other", "drop"]), st.integers(0, 7)), max_size=40
)


@FAST
@given(SESSION_STEPS, st.integers(0, 4))
def test_a_session_queue_is_fifo_and_a_release_frees_or_starts_the_oldest(steps: list, depth: int) -> None:
    stream_id = uuid4()
    state = session.SessionState(stream_id=stream_id)
    events: list[Any] = []
    active: str | None = None
    queue: list[str] = []  # the reference model
    for n, (kind, pick) in enumerate(steps):
        at = now()
        new: tuple = ()
        if kind == "admit":
            cmd = AdmitRun(
                stream_id=stream_id,
                at=at,
                session_id="s",
                run_id=f"r{n}",
                queued_run_id=f"q{n}",
                model="m",
                requester="",
                max_queue_depth=depth,
            )
            try:
                new = decide_admit(state, cmd)
            except SessionQueueFull:
                assert active is not None and len(queue) >= depth
            else:
                if active is None:
                    active = f"r{n}"
                else:
                    queue.append(f"q{n}")
        elif kind in ("release", "release_other"):
            target = active if kind == "release" and active else f"x{pick}"
            cmd = release_run.ReleaseRun(stream_id=stream_id, at=at, run_id=target, outcome="done", turn=[])
            new = release_run.decide(state, cmd)
            if target == active:
                active = queue.pop(0) if queue else None
            else:
                assert new == ()  # releasing a run that is not active changes nothing
        else:
            target = queue[pick % len(queue)] if queue and pick % 2 else f"x{pick}"
            cmd = drop_queued_run.DropQueuedRun(stream_id=stream_id, at=at, run_id=target, reason="r")
            new = drop_queued_run.decide(state, cmd)
            if target in queue:
                queue.remove(target)
        for event in new:
            state = session.evolve(state, event)
        events += new
        assert state.active_run == active and list(state.queue) == queue
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert session.fold(stream_id, events) == state


RUNS = st.lists(st.lists(st.tuples(RUN_STEPS, st.integers(0, 5)), max_size=12), min_size=1, max_size=5)
SCHEDULE = st.lists(st.sampled_from(["a", "b", "crash", "none"]), min_size=1, max_size=40)


class Crash(Exception):
    pass


@SLOW
@given(RUNS, SCHEDULE, st.integers(1, 4))
def test_live_projection_with_crashes_and_two_projectors_equals_a_full_replay(
    runs: list, schedule: list, batch: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = EventStore(root / "events.db")
        # interleave the runs' events, one save per event, like concurrent requests
        streams = [play_run(steps, uuid4()) for steps in runs]
        pending = [list(s) for s in streams]
        a = runner(store, root, batch_size=batch)
        b = runner(store, root, batch_size=batch)
        turn = 0
        while any(pending):
            for events in pending:
                if events:
                    store.save([events.pop(0)])
            action = schedule[turn % len(schedule)]
            turn += 1
            if action == "a":
                a.step()
            elif action == "b":
                b.step()
            elif action == "crash":  # a step dies after writing its rows, before its tracking row
                crashing = runner(store, root, batch_size=batch, between_rows_and_tracking=_crash)
                with contextlib.suppress(Crash):
                    crashing.step()
                crashing.close()
        a.catch_up()
        b.catch_up()
        full = runner(store, root / "replay")
        full.catch_up()
        assert dump(a) == dump(full)
        for r in (a, b, full):
            r.close()
        store.close()


def _crash() -> None:
    raise Crash
