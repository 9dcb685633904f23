"""What an approval covers (canonical arguments, digest, visible rendering) and its capability tokens."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.agent.approval import arguments_digest, canonical_arguments, display_arguments, visible
from app.agent.review_links import ReviewLinks, mint, verify

SECRET = b"s" * 32
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def test_canonical_arguments_are_what_the_tool_decodes() -> None:
    assert canonical_arguments('{"b": 1, "a": "x", "a": "y"}') == '{"a":"y","b":1}'
    assert canonical_arguments("not json") == "not json"  # kept byte for byte: the tool refuses it
    assert canonical_arguments("[1, 2]") == "[1, 2]"
    assert canonical_arguments("") == "{}"


def test_the_digest_covers_the_tool_and_the_arguments() -> None:
    expected = hashlib.sha256(b'bash\n{"command":"ls"}').hexdigest()
    assert arguments_digest("bash", '{"command":"ls"}') == expected
    assert arguments_digest("write_file", '{"command":"ls"}') != expected


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=4))
def test_every_invisible_is_escaped_and_the_display_loses_nothing(value: dict[str, str]) -> None:
    canonical = canonical_arguments(json.dumps(value))
    shown = display_arguments(canonical)
    assert all(ch == "\n" or ch.isprintable() or ch == " " for ch in shown)
    assert json.loads(canonical) == value


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a" + " " * 12 + "b", "a⟪12 spaces⟫b"),
        ("a" + " " * 7 + "b", "a" + " " * 7 + "b"),
        ("x\u202ey\u200bz\x1b", "x\\u202ey\\u200bz\\u001b"),
        ("fake ⟪3 spaces⟫", "fake \\u27ea3 spaces\\u27eb"),  # a marker cannot be forged
        ("\u3000\u00a0\u2028", "\\u3000\\u00a0\\u2028"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_tokens_are_bound_to_question_digest_and_expiry() -> None:
    token = mint(SECRET, "qa", "d" * 64, NOW + timedelta(seconds=60))
    assert verify(SECRET, token, "qa", "d" * 64, NOW) is None
    assert verify(SECRET, token, "qb", "d" * 64, NOW) == "invalid"
    assert verify(SECRET, token, "qa", "e" * 64, NOW) == "invalid"
    assert verify(b"other" * 8, token, "qa", "d" * 64, NOW) == "invalid"
    assert verify(SECRET, token, "qa", "d" * 64, NOW + timedelta(seconds=61)) == "expired"
    expiry, mac = token.split(".")
    assert verify(SECRET, f"{int(expiry) + 3600}.{mac}", "qa", "d" * 64, NOW) == "invalid"  # no extending
    for bad in ("", ".", "x.y", "1.", "é.é", "9" * 300):
        assert verify(SECRET, bad, "qa", "d" * 64, NOW) == "invalid"


def test_links_need_a_public_url() -> None:
    assert ReviewLinks("", SECRET).for_question("q", "d", NOW) is None
    review, deny = ReviewLinks("http://h:1/", SECRET).for_question("q", "d", NOW) or ("", "")
    assert review.startswith("http://h:1/review/q?token=") and deny == review + "&action=deny"


def test_events_recorded_before_digests_replay_with_defaults() -> None:
    """The store rebuilds events from their stored fields only: new fields must have defaults."""
    from uuid import uuid4

    from app.agent.question_block import QuestionView
    from app.events.run import PermissionAsked, PermissionDecided, RunState, evolve
    from app.projections import permissions
    from app.projections.runs import event_data

    def stored(cls: type, version: int, **fields: object) -> object:
        event = object.__new__(cls)
        base = {"originator_id": run, "originator_version": version, "timestamp": NOW}
        object.__setattr__(event, "__dict__", {**base, **fields})
        return event

    run = uuid4()
    asked = stored(
        PermissionAsked,
        2,
        question_id="q",
        tool="bash",
        call_id="c",
        arguments='{"command":"ls"}',
        expires_at=NOW.isoformat(),
    )
    decided = stored(
        PermissionDecided, 3, question_id="q", decision="allow", decided_by="operator", requester=""
    )
    state = evolve(evolve(RunState(run_id=run, version=1, fired=True), asked), decided)  # type: ignore[arg-type]
    assert state.decided_questions == {"q"} and state.question_digests == {"q": ""}
    assert event_data(decided)["decided_via"] == "" and event_data(decided)["scope"] == "once"  # type: ignore[arg-type]
    assert permissions.project(asked, 1) and permissions.project(decided, 2)  # type: ignore[arg-type]
    view = QuestionView(None, 120)
    assert "`bash`" in view.block(asked, NOW) and "Allowed by the operator." in view.decided(decided)  # type: ignore[arg-type]
