"""The msgspec transcoder writes and reads eventsourcing's JSON format byte for byte."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from app.events.transcoder import MsgspecTranscoder


def _pair() -> tuple[JSONTranscoder, MsgspecTranscoder]:
    generic, fast = JSONTranscoder(), MsgspecTranscoder()
    for transcoder in (generic, fast):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return generic, fast


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.uuids()
    | st.datetimes(timezones=st.just(UTC))
    | st.decimals(allow_nan=False, allow_infinity=False)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.timeout(120)  # 200 examples: about 2 s idle, more than the mutation run's --timeout when loaded
@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_same_bytes_and_same_values_as_the_generic_transcoder(state: dict[str, Any]) -> None:
    generic, fast = _pair()
    written = generic.encode(state)
    assert fast.encode(state) == written
    assert fast.decode(written) == generic.decode(written)


def test_an_event_state_as_stored_by_earlier_versions_reads_back() -> None:
    _, fast = _pair()
    at = datetime(2026, 11, 30, 9, 30, 40, 585885, tzinfo=UTC)
    stored = (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-30T09:30:40.585885+00:00"},'
        b'"run_id":{"_type_":"uuid_hex","_data_":"c7cef1c5a17648f79df7b96dce336d89"},'
        b'"entries":["x",{"_type_":"only-a-name"}],"elapsed_ms":1.5,"text":"h\xc3\xa9"}'
    )
    assert fast.decode(stored) == {
        "timestamp": at,
        "run_id": UUID("c7cef1c5a17648f79df7b96dce336d89"),
        "entries": ["x", {"_type_": "only-a-name"}],
        "elapsed_ms": 1.5,
        "text": "hé",
    }
    assert fast.encode({"timestamp": at, "text": "hé"}) == (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-30T09:30:40.585885+00:00"},"text":"h\xc3\xa9"}'
    )


def test_what_msgspec_would_write_differently_goes_through_the_generic_transcoder() -> None:
    generic, fast = _pair()
    odd = (
        {"x": math.nan},
        {"x": [math.inf]},
        {"x": 1e16},
        {"x": -2.5e-7},
        {1: "int key"},
        {True: "bool key"},  # json writes "true"; msgspec refuses a bool key
        {None: "none key"},
        {"t": (1, "a")},
    )
    for state in odd:
        written = generic.encode(state)
        assert fast.encode(state) == written
        decoded = fast.decode(written)
        assert decoded.keys() == generic.decode(written).keys()


def test_an_unregistered_type_fails_as_the_generic_transcoder_does() -> None:
    generic, fast = _pair()
    with pytest.raises(TranscodingNotRegisteredError):
        fast.encode({"gap": timedelta(seconds=1)})
    unknown = b'{"x":{"_type_":"no_such_type","_data_":1}}'
    with pytest.raises(TranscodingNotRegisteredError) as ours:
        fast.decode(unknown)
    with pytest.raises(TranscodingNotRegisteredError) as theirs:
        generic.decode(unknown)
    assert str(ours.value) == str(theirs.value)  # the same words in the log, whichever read it


def test_only_an_object_of_exactly_type_and_data_is_a_registered_value() -> None:
    """An object with `_type_` but another second key, or a third key, is plain data, as `json` reads it."""
    generic, fast = _pair()
    for stored in (
        b'{"x":{"_type_":"uuid_hex","other":1}}',
        b'{"x":{"_type_":"uuid_hex","_data_":"c7cef1c5a17648f79df7b96dce336d89","more":1}}',
    ):
        assert fast.decode(stored) == generic.decode(stored)
        assert isinstance(fast.decode(stored)["x"], dict)


def test_a_value_other_than_a_dict_is_written_as_the_generic_transcoder_does() -> None:
    generic, fast = _pair()
    for value in (["a", 1, [2.5]], ("t", None), "text", 7, 0.5, UUID("c7cef1c5a17648f79df7b96dce336d89")):
        assert fast.encode(value) == generic.encode(value)
