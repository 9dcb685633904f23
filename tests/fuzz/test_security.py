"""Security checks on a real `bmo serve` (SPEC §13).

Covered elsewhere, not repeated here:
- identity headers are ignored from untrusted peers (and the ignoring is a run
  event): `tests/e2e/test_sessions.py::test_identity_headers_only_from_trusted_proxies`;
- `--allow-no-auth` on a non-loopback address refuses to start:
  `tests/e2e/test_serve_cli.py::test_allow_no_auth_on_a_public_address_is_refused`
  (and no token at all: `test_serve_without_token_or_allow_no_auth_refuses_and_names_both`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.http import asgi
from app.http.asgi import TokenCheck
from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls
from tests.fuzz.conftest import (
    assert_envelope,
    assert_recorded_once,
    parse_responses,
    raw_exchange,
    records_of,
    start_server,
)

TOKEN = "sekret-bmo-token-4f1c9a7e2b"  # distinctive, so a leak is easy to spot
WRONG_TOKENS = {
    "missing": None,
    "wrong": "Bearer wrong",
    "correct-prefix": f"Bearer {TOKEN[:-1]}",
    "correct-plus-one": f"Bearer {TOKEN}x",
    "long": "Bearer " + "z" * 8000,
    "uppercased": f"Bearer {TOKEN.upper()}",
    "no-scheme": TOKEN,
    "basic-scheme": "Basic " + TOKEN,
    "empty-bearer": "Bearer",
}
PROTECTED = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/openai-compat/posture"),
    ("GET", "/v1/openai-compat/runs"),
    ("GET", "/v1/openai-compat/runs/" + "0" * 32 + "/events"),
    ("GET", "/v1/permissions"),
    ("POST", "/v1/permissions/nope"),
    ("GET", "/schema/openapi.json"),
    ("GET", "/v1/no-such-route"),
]
# per response, not per token: granian adds `connection: close` when a refused POST's body was
# still unread (a race with the upload, seen for every variant alike)
VARYING = {"x-request-id", "date", "connection"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(module_root: Path, upstream: FakeOpenAI) -> Iterator[BmoServer]:
    config = (
        '[options.openai_compat]\npermission_timeout_s = 1\nambiguity_action = "code"\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-upstream"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 10\n'
    )
    started = start_server(module_root, config, token=TOKEN)
    yield started
    started.stop()


def _request(server: BmoServer, method: str, path: str, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = {"messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
    return httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=30)


# ------------------------------------------------------------------ brute force


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_wrong_token_gets_the_same_401(server: BmoServer, method: str, path: str) -> None:
    shapes = set()
    for name, authorization in WRONG_TOKENS.items():
        response = _request(server, method, path, authorization)
        assert response.status_code == 401, (name, response.text)
        assert_envelope(401, response.headers, response.content)
        shape = (
            response.status_code,
            response.content,
            tuple(sorted((k, v) for k, v in response.headers.items() if k not in VARYING)),
        )
        shapes.add(shape)
        assert_recorded_once(server, response.headers["x-request-id"], "auth_failed")
    assert len(shapes) == 1, shapes  # status, body and headers: nothing tells the tokens apart
    _, body, headers = shapes.pop()
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert dict(headers)["www-authenticate"] == "Bearer"
    assert _request(server, method, path, f"Bearer {TOKEN}").status_code != 401


def test_the_check_compares_fixed_length_digests_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    check = TokenCheck(TOKEN)
    assert TOKEN not in repr(vars(check))
    assert check._digest == hashlib.sha256(TOKEN.encode()).digest()  # only the digest is kept
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(asgi.hmac, "compare_digest", spy)
    for presented in (b"", b"Bearer x", f"Bearer {TOKEN}".encode(), b"Bearer " + b"y" * 100_000):
        check.allows(presented)
    assert check.allows(f"Bearer {TOKEN}".encode()) and check.allows(f"bearer  {TOKEN} ".encode())
    assert not check.allows(None) and not check.allows(f"Bearer {TOKEN[:-1]}".encode())
    assert len(compared) == 8  # every presented value, even none, goes through compare_digest
    assert all(len(a) == len(b) == 32 for a, b in compared)  # SHA-256 digests, whatever was sent


def _timed(fn, n: int) -> int:  # type: ignore[no-untyped-def]
    started = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - started) // n


def test_the_check_takes_as_long_for_a_near_miss_as_for_a_far_miss() -> None:
    """In-process (little noise): interleaved rounds, medians; fails only on a gross difference."""
    check = TokenCheck(TOKEN)
    candidates = {
        "correct": f"Bearer {TOKEN}".encode(),
        "prefix-right": f"Bearer {TOKEN[:-1]}!".encode(),
        "first-char-wrong": f"Bearer !{TOKEN[1:]}".encode(),
        "all-wrong-same-length": b"Bearer " + b"!" * len(TOKEN),
    }
    samples: dict[str, list[int]] = {name: [] for name in candidates}
    for _ in range(41):
        for name, presented in candidates.items():
            samples[name].append(_timed(lambda p=presented: check.allows(p), 300))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    fastest, slowest = min(medians.values()), max(medians.values())
    assert slowest - fastest < 2_000, medians  # < 2 µs apart per call (a call is ~1 µs)


def test_over_http_a_near_miss_is_not_measurably_slower(server: BmoServer) -> None:
    """Interleaved requests, medians; a noisy machine only fails this on a gross (> 5 ms) difference."""
    near = {"Authorization": f"Bearer {TOKEN[:-1]}!"}
    far = {"Authorization": "Bearer " + "!" * len(TOKEN)}
    timings: dict[str, list[float]] = {"near": [], "far": []}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(120):
            for name, headers in (("near", near), ("far", far)):
                started = time.perf_counter()
                assert client.get("/v1/models", headers=headers).status_code == 401
                timings[name].append(time.perf_counter() - started)
    difference_ms = abs(statistics.median(timings["near"]) - statistics.median(timings["far"])) * 1000
    assert difference_ms < 5, timings


# ------------------------------------------------------------------ the token never leaks


def test_the_token_never_appears_in_logs_records_events_or_bodies(
    server: BmoServer, upstream: FakeOpenAI
) -> None:
    mistyped = "Bearer mistyped-secret-81be"  # a wrong token is a secret too (a typo of the real one)
    bodies: list[bytes] = []
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
        upstream.script(ToolCalls([("c1", "read_file", '{"path": "README.md"}')]), Text("It is a demo."))
        ok = client.post(
            "/v1/chat/completions",
            json={"model": "up/fake-model", "messages": [{"role": "user", "content": "what is this?"}]},
        )
        assert ok.status_code == 200
        bodies.append(ok.content)
        upstream.script(Text("streamed"))
        streamed = client.post(
            "/v1/chat/completions",
            json={"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        bodies.append(streamed.content)
        for response in (
            client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
            client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user"}]}),
            client.get("/v1/models", headers={"Authorization": mistyped}),
            client.get("/schema/openapi.json", headers={"Authorization": mistyped}),
            client.get("/v1/nope"),
        ):
            assert 400 <= response.status_code < 500
            bodies.append(response.content)
        runs = client.get("/v1/openai-compat/runs", params={"limit": 500}).json()["data"]
        events = [client.get(f"/v1/openai-compat/runs/{r['request_id']}/events").content for r in runs]
        posture = client.get("/v1/openai-compat/posture").content
        schema = client.get("/schema/openapi.json").content
    records_of(server, runs[0]["request_id"])
    stores = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    upstream_headers = json.dumps([r["headers"] for r in upstream.requests])
    for secret in (TOKEN, mistyped.split()[1]):
        needle = secret.encode()
        assert needle not in server.stderr().encode(), "token in stderr"
        assert needle not in server.log_path.read_bytes(), "token in bmo.jsonl"
        assert needle not in stores, "token in the data dir (event store, read models, logs)"
        assert needle not in json.dumps(runs).encode() + posture + schema, "token in the ledger or posture"
        assert all(needle not in e for e in events), "token in run events"
        assert all(needle not in b for b in bodies), "token in a response body"
        assert secret not in upstream_headers, "the client's token was forwarded upstream"
    assert any(r["headers"]["authorization"] == "Bearer sk-upstream" for r in upstream.requests)


# ------------------------------------------------------------------ CORS


@pytest.mark.parametrize("with_token", [True, False])
def test_cors_is_closed_by_default(server: BmoServer, with_token: bool) -> None:
    auth = server.headers if with_token else {}
    origin = {"Origin": "https://evil.example"}
    preflight = httpx.options(
        server.base_url + "/v1/chat/completions",
        headers={
            **auth,
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == (204 if with_token else 401)
    simple = httpx.get(server.base_url + "/v1/models", headers={**auth, **origin})
    assert simple.status_code == (200 if with_token else 401)
    for response in (preflight, simple):
        assert not [k for k in response.headers if k.lower().startswith("access-control-")], response.headers


# ------------------------------------------------------------------ request smuggling


def _smuggled(marker: str) -> bytes:
    return (
        f"GET /v1/models HTTP/1.1\r\nHost: bmo\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"User-Agent: {marker}\r\n\r\n"
    ).encode()


def _front(extra: str, length: int | None) -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: bmo\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nUser-Agent: smuggle-front\r\n"
    )
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + extra + "\r\n").encode()


def _cl_te(marker: str) -> bytes:
    body = b"0\r\n\r\n" + _smuggled(marker)  # CL covers the smuggled request, TE ends before it
    return _front("Transfer-Encoding: chunked\r\n", len(body)) + body


def _te_cl(marker: str) -> bytes:
    inner = _smuggled(marker)  # TE covers the smuggled request, CL = 4 ends before it
    body = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    return _front("Transfer-Encoding: chunked\r\n", 4) + body


def _te_te(marker: str) -> bytes:
    body = b"0\r\n\r\n" + _smuggled(marker)
    return _front("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", len(body)) + body


def _two_cl(marker: str) -> bytes:
    body = b"{}" + _smuggled(marker)
    return _front(f"Content-Length: {len(body)}\r\n", 2) + body


def _obs_fold(marker: str) -> bytes:
    body = b"0\r\n\r\n" + _smuggled(marker)
    return _front("X-Padding: a\r\n Transfer-Encoding: chunked\r\n", len(body)) + body


def _space_before_colon(marker: str) -> bytes:
    body = b"0\r\n\r\n" + _smuggled(marker)
    return _front("Transfer-Encoding : chunked\r\n", len(body)) + body


def _pipelined(marker: str) -> bytes:  # the control: two honest requests on one connection
    last = _smuggled(marker).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    return _smuggled("smuggle-front") + last


# name -> (request builder, [(status, answered by bmo?)], connection closed after, smuggled request served)
SMUGGLING = {
    "CL.TE": (_cl_te, [(400, True)], True, False),  # TE wins: empty body, 400 from bmo; then closed
    "TE.CL": (_te_cl, [(400, True)], True, False),  # TE wins: the "request" is body bytes, invalid JSON
    "TE.TE-obfuscated": (_te_te, [(400, False)], True, False),
    "two-Content-Length": (_two_cl, [(400, False)], True, False),
    "obs-fold-TE": (_obs_fold, [(400, False)], True, False),
    "space-before-colon-TE": (_space_before_colon, [(400, False)], True, False),
    "control-pipelined": (_pipelined, [(200, True), (200, True)], True, True),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_request_smuggling_is_never_two_requests(server: BmoServer, name: str) -> None:
    build, expected, closes, served = SMUGGLING[name]
    marker = f"smuggled-{name}"
    received, closed = raw_exchange(server.port, build(marker), wait=3.0)
    responses = parse_responses(received)
    assert [(status, "x-request-id" in headers) for status, headers, _ in responses] == expected, received
    assert closed == closes
    for status, headers, body in responses:
        assert status < 500
        if status >= 400 and "x-request-id" in headers:
            assert_envelope(status, httpx.Headers(headers), body)
    sentinel = httpx.get(server.base_url + "/v1/models", headers=server.headers)
    records_of(server, sentinel.headers["x-request-id"])
    uas = [r.get("client_ua") for r in server.records() if r["msg"] == "openai_compat.fired"]
    assert (marker in uas) == served, uas
    assert "Traceback" not in server.stderr()
