"""The CLI refuses filter values outside the ledger's vocabulary, so the vocabulary must be complete."""

from __future__ import annotations

import re
from pathlib import Path

from app import errors
from app.http.routes import route_name
from app.projections import runs

APP = Path(__file__).resolve().parents[2] / "app"
PATHS = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/openai-compat/posture",
    "/v1/openai-compat/runs",
    "/v1/openai-compat/runs/abc/events",
    "/v1/permissions",
    "/v1/permissions/abc",
    "/models",
    "/v1/nope",
    "/v1//models/",
]


def test_every_route_name_is_in_the_vocabulary() -> None:
    assert {route_name(p) for p in PATHS} == set(runs.ROUTES)


def test_every_outcome_the_code_can_record_is_in_the_vocabulary() -> None:
    pattern = re.compile(r"""(?:outcome\s*=\s*|finish(?:_later)?\(\s*|note\(\s*)["']([a-z0-9_]+)["']""")
    used = {m for path in APP.rglob("*.py") for m in pattern.findall(path.read_text())}
    used |= {
        cls.outcome
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BmoError) and getattr(cls, "outcome", None)
    }
    assert used, "the scan found nothing: the pattern is stale"
    assert used - set(runs.OUTCOMES) == set()
    assert set(runs.OPERATOR_ROUTES) <= set(runs.ROUTES)
