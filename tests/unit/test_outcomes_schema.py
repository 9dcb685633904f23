"""The run outcome is one list (app/outcomes.py), and the OpenAPI document says so too."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.http.app import create_litestar
from app.http.wire import RunRow
from app.outcomes import OUTCOMES


def _schema() -> dict[str, Any]:
    app = create_litestar(deps=None)  # type: ignore[arg-type]  # the document needs no dependencies
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def test_the_openapi_run_row_outcome_is_the_outcome_list() -> None:
    outcome = _schema()["components"]["schemas"]["RunRow"]["properties"]["outcome"]
    assert outcome["enum"] == [*OUTCOMES, None]  # a terminal outcome, or null while the run is open


def test_a_run_row_refuses_an_outcome_outside_the_list() -> None:
    row = {
        **dict.fromkeys(("request_id", "session_id", "route", "model", "tool_policy"), ""),
        **dict.fromkeys(("ambiguity_action", "client_ua", "requester", "task", "started_at"), ""),
        **dict.fromkeys(("ended_at", "elapsed_ms", "status_code", "error"), None),
        **{"stream": True, "is_session_reuse": False, "prompt_tokens": 0, "completion_tokens": 0},
    }
    assert msgspec.convert({**row, "outcome": "error_500"}, RunRow).outcome == "error_500"
    assert msgspec.convert({**row, "outcome": None}, RunRow).outcome is None
    with pytest.raises(msgspec.ValidationError, match="outcome"):
        msgspec.convert({**row, "outcome": "no_such_outcome"}, RunRow)
