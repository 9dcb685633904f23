"""Every failure is an OpenAI error envelope with the right status, never a traceback."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.server import BmoServer


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "bmo/local", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_envelope(response, 400)


def test_empty_messages_is_400_naming_the_field(http: httpx.Client) -> None:
    error = assert_envelope(
        http.post("/v1/chat/completions", json={"model": "bmo/local", "messages": []}), 400
    )
    assert "messages" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": "hello"},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        {"messages": [{"role": "user", "content": "x"}], "n": 2},
        {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        [1, 2, 3],
    ],
)
def test_wrong_shapes_are_400(http: httpx.Client, body: object) -> None:
    assert_envelope(http.post("/v1/chat/completions", json=body), 400)


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="nope/x", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert "bmo/local" in caught.value.message  # says what exists


def test_wrong_token_is_401_for_every_route(server: BmoServer) -> None:
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/openai-compat/posture"),
        ("GET", "/v1/openai-compat/runs"),
        ("GET", "/schema/openapi.json"),
    ]:
        response = httpx.request(
            method, server.base_url + path, json={}, headers={"Authorization": "Bearer nope"}
        )
        assert_envelope(response, 401, "invalid_api_key")
        assert_envelope(httpx.request(method, server.base_url + path), 401)


def test_probes_need_no_token(server: BmoServer) -> None:
    assert httpx.get(server.base_url + "/healthz").status_code == 200
    assert httpx.get(server.base_url + "/readyz").status_code == 200


def test_unknown_route_and_wrong_method_use_the_envelope(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/nope"), 404)
    assert_envelope(http.get("/v1/chat/completions"), 405)
    assert_envelope(http.delete("/v1/models"), 405)


def test_oversized_body_is_413(http: httpx.Client) -> None:
    big = "x" * (5 * 1024 * 1024)
    response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": big}]})
    assert_envelope(response, 413)


def test_invalid_session_header_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"X-BMO-Session-Id": "bad id with spaces"},
    )
    assert_envelope(response, 400, "invalid_session_id")


def test_bad_runs_query_is_400_not_500(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/openai-compat/runs", params={"limit": 0}), 400)
    assert_envelope(http.get("/v1/openai-compat/runs", params={"limit": "many"}), 400)
    assert_envelope(http.get("/v1/openai-compat/runs", params={"cursor": "abc"}), 400)
    assert_envelope(http.get("/v1/openai-compat/runs/not-a-run/events"), 404, "run_not_found")


def test_chat_is_404_when_disabled(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config_text="[options.openai_compat]\nenabled = false\n")
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=server.headers,
    )
    assert_envelope(response, 404)
    posture = httpx.get(server.base_url + "/v1/openai-compat/posture", headers=server.headers).json()
    assert posture["enabled"] is False and posture["label"] == "disabled"
