"""Schema fuzzing: schemathesis against bmo's own `/schema/openapi.json` on a real `bmo serve`.

Every documented operation is exercised with and without the bearer token:
the examples, coverage (boundary and negative values, unexpected methods,
missing/odd auth) and fuzzing phases, bounded (`MAX_EXAMPLES` per operation and
mode) and deterministic (a fixed seed, derandomized Hypothesis, no example
database). Asserted on every response: no 5xx, a documented status, the
documented content type, headers (`X-Request-Id`) and schema, and for every
non-2xx the OpenAI envelope.

Check left out, on purpose: `positive_data_acceptance` (a schema-valid body may
still be refused with a documented 400: an unknown model, `n > 1`, a `tool`
message without an earlier call; JSON Schema cannot say those).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.e2e.server import BmoServer
from tests.fuzz.conftest import REQUEST_ID, assert_envelope, records_of, start_server

SEED = 20251125
MAX_EXAMPLES = 10
UNPROTECTED = {"/healthz", "/readyz"}
OPERATIONS = {
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/openai-compat/posture",
    "GET /v1/openai-compat/runs",
    "GET /v1/openai-compat/runs/{run_id}/events",
    "GET /v1/permissions",
    "POST /v1/permissions/{question_id}",
    "GET /healthz",
    "GET /readyz",
}
SEEN: list[tuple[str, int, str]] = []  # (operation, status, request id) of every fuzzed response


@pytest.fixture(scope="module")
def fuzz_server(module_root: Path) -> Iterator[BmoServer]:
    server = start_server(
        module_root,
        # bmo/local may run `bash` for a prompt like "run `x`": the question times out in 1 s.
        "[options.openai_compat]\npermission_timeout_s = 1\n",
    )
    yield server
    server.stop()


def _config(max_examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                "mode": "all",
            },
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 30,
        }
    )


def _load(server: BmoServer, max_examples: int) -> schemathesis.BaseSchema:
    url = f"{server.base_url}/schema/openapi.json"
    document = httpx.get(url, headers=server.headers, timeout=10).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(document, config=_config(max_examples))
    schema.config.update(base_url=server.base_url)
    return schema


@pytest.fixture(scope="module")
def api_schema(fuzz_server: BmoServer) -> schemathesis.BaseSchema:
    return _load(fuzz_server, MAX_EXAMPLES)


@pytest.fixture(scope="module")
def api_schema_small(fuzz_server: BmoServer) -> schemathesis.BaseSchema:
    return _load(fuzz_server, 3)


with_token = schemathesis.pytest.from_fixture("api_schema")
without_token = schemathesis.pytest.from_fixture("api_schema_small")
HYPOTHESIS = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)


def test_the_document_lists_every_route_and_the_bearer_scheme(fuzz_server: BmoServer) -> None:
    document = httpx.get(f"{fuzz_server.base_url}/schema/openapi.json", headers=fuzz_server.headers).json()
    found = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert found == OPERATIONS
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            responses = operation["responses"]
            assert operation.get("security") == (None if path in UNPROTECTED else [{"bearer": []}]), label
            for status, response in responses.items():
                assert "X-Request-Id" in response.get("headers", {}), (label, status)
                schema = response["content"]["application/json"]["schema"]
                assert schema != {}, f"{label} {status} documents no schema"
                if int(status) >= 400:
                    assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (label, status)
            if path not in UNPROTECTED:
                assert "401" in responses, label


def _check_common(case: schemathesis.Case, response: schemathesis.Response) -> None:
    status = response.status_code
    request_id = response.headers.get("x-request-id", [""])[0]
    assert status < 500, f"{case.operation.label}: {status} {response.text[:500]}"
    assert REQUEST_ID.fullmatch(request_id), (case.operation.label, response.headers)
    assert "Traceback" not in response.text
    if status >= 400:
        headers = httpx.Headers({k: v[0] for k, v in response.headers.items()})
        assert_envelope(status, headers, response.content)
    SEEN.append((case.operation.label, status, request_id))


@pytest.mark.timeout(300)  # one test item holds every operation's examples
@with_token.parametrize()
@HYPOTHESIS
def test_fuzz_with_token(case: schemathesis.Case, fuzz_server: BmoServer) -> None:
    response = case.call(headers=fuzz_server.headers)
    _check_common(case, response)
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


@pytest.mark.timeout(300)
@without_token.parametrize()
@HYPOTHESIS
def test_fuzz_without_token(case: schemathesis.Case, fuzz_server: BmoServer) -> None:
    if case.headers:  # the coverage phase may generate an Authorization header: drop it
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
    response = case.call()
    _check_common(case, response)
    if case.path in UNPROTECTED:
        assert response.status_code in (200, 204, 405), response.text
        return
    assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.text[:300]}"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers.get("www-authenticate") == ["Bearer"]


def test_real_ids_and_streams_match_the_document(
    api_schema: schemathesis.BaseSchema, fuzz_server: BmoServer
) -> None:
    """What random ids cannot reach: a real run's timeline (JSON and SSE) and a streamed chat."""
    chat = api_schema["/v1/chat/completions"]["POST"]
    body = {"messages": [{"role": "user", "content": "list files"}], "stream": True}
    streamed = chat.Case(body=body, headers=fuzz_server.headers)
    response = streamed.call()
    assert response.headers["content-type"][0].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    streamed.validate_response(response, excluded_checks=[positive_data_acceptance])
    run_id = response.headers["x-request-id"][0]
    records_of(fuzz_server, run_id)
    events = api_schema["/v1/openai-compat/runs/{run_id}/events"]["GET"]
    for query in ({}, {"follow": "true"}):
        case = events.Case(path_parameters={"run_id": run_id}, query=query, headers=fuzz_server.headers)
        response = case.call()
        assert response.status_code == 200, response.text
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        _check_common(case, response)
    assert '"type":"Finished"' in response.text and response.text.endswith("data: [DONE]\n\n")


def test_every_fuzzed_request_was_recorded_once(fuzz_server: BmoServer) -> None:
    """Each compat request: one `openai_compat.fired`, one terminal `openai_compat.action`."""
    compat = [(label, status, rid) for label, status, rid in SEEN if "/v1/" in label]
    if not compat:
        pytest.skip("run together with the fuzz tests")
    assert len({rid for _, _, rid in compat}) == len(compat)  # ids never repeat
    records_of(fuzz_server, compat[-1][2])  # the last request: once its records are written, all are
    by_id: dict[str, list[dict]] = {}
    for record in fuzz_server.records():
        by_id.setdefault(record.get("request_id", ""), []).append(record)
    for label, status, request_id in compat:
        mine = by_id.get(request_id, [])
        fired = [r for r in mine if r["msg"] == "openai_compat.fired"]
        terminal = [r for r in mine if r["msg"] == "openai_compat.action" and r.get("terminal")]
        assert len(fired) == 1 and len(terminal) == 1, (label, status, mine)
        assert terminal[0]["status_code"] == status, (label, terminal[0])
        expected = {401: "auth_failed"}.get(status, "invalid_request" if status >= 400 else None)
        if expected:
            assert terminal[0]["outcome"] == expected, (label, terminal[0])
    assert "Traceback" not in fuzz_server.stderr()
    assert fuzz_server.token not in fuzz_server.stderr()
