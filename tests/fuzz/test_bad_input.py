"""The bad-input corpus (`tests/corpus/*.json`) replayed against one real `bmo serve`.

`bad_input.json`: one case per line, `{name, method?, path?, headers?, auth?, body, expect}`.

- body: `json` (any JSON value, sent as application/json), `text` (UTF-8), `b64`
  (bytes) or `gen` (generated: `messages`, `big_content`, `nested_arrays`,
  `nested_objects`, `long_model`, `chunked_zeros`); none for no body.
- `raw`: the request head sent as is over a socket (what HTTP client libraries
  refuse to send), latin-1; `{token}` and `{len}` (the body length) are filled in.
- any string may be written `{"repeat": s, "times": n}` or a list of such parts.
- auth: absent = the right bearer token; `null` = no header; a string = the
  header value (`{token}`, `{token_prefix}` filled in).
- expect: `status`; `outcome` (the terminal `openai_compat.action` outcome,
  `null` when the HTTP server refused the bytes before bmo saw a request:
  `layer: "granian"`); optional `code`, `param`, `message` (a substring),
  `route`, `allow`, `client_ua_max`.

Checked for every case: the status, never a 5xx, the OpenAI envelope with an
`X-Request-Id` for every bmo error, no "Traceback" in the response or the
server's stderr, and exactly one `openai_compat.fired` plus one terminal
`openai_compat.action` with the expected outcome.

`tool_attacks.json`: tool calls a scripted upstream model makes through the
agent (path traversal, absolute paths, symlinks out of the workspace, shell
metacharacters in `bash` under `chat_only`); checked on the tool results the
upstream receives next, the run's events and the filesystem.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls
from tests.fuzz.conftest import (
    REQUEST_ID,
    assert_envelope,
    assert_recorded_once,
    parse_responses,
    raw_exchange,
    records_of,
    start_server,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = json.loads((CORPUS / "bad_input.json").read_text())
TOOL_ATTACKS = json.loads((CORPUS / "tool_attacks.json").read_text())
SECRET = "TOP-SECRET-7d1e0c"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


@pytest.fixture(scope="module")
def outside(module_root: Path) -> Path:
    """A directory next to the workspace, with a secret, and links into it from the workspace."""
    from tests.fuzz.conftest import make_workspace

    workspace = make_workspace(module_root)
    out = module_root / "outside"
    out.mkdir()
    (out / "secret.txt").write_text(f"{SECRET}\n")
    os.symlink(out / "secret.txt", workspace / "link_secret.txt")
    os.symlink(out, workspace / "link_outside")
    os.symlink("/etc", workspace / "link_etc")
    return out


@pytest.fixture(scope="module")
def server(module_root: Path, upstream: FakeOpenAI, outside: Path) -> Iterator[BmoServer]:
    config = (
        "[options.openai_compat]\n"
        'tool_policy = "chat_only"\n'
        'ambiguity_action = "code"\n'
        "permission_timeout_s = 1\n"
        "[permissions]\n"
        'allowed_tools = ["write_file", "edit_file"]\n'  # so their confinement itself is tested
        "[providers.up]\n"
        f'type = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-upstream"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 10\n'
    )
    started = start_server(module_root, config)
    yield started
    started.stop()


# ------------------------------------------------------------------ building requests


def expand(value: Any) -> Any:
    if isinstance(value, dict) and "repeat" in value:
        return value["repeat"] * value["times"]
    if isinstance(value, list):
        return "".join(expand(part) for part in value)
    return value


def fill(text: str, server: BmoServer) -> str:
    token = server.token or ""
    return text.replace("{token_prefix}", token[: len(token) // 2]).replace("{token}", token)


def generated(gen: dict[str, Any]) -> bytes:
    kind = gen["kind"]
    hi = [{"role": "user", "content": "hi"}]
    prefix = b'{"messages": [{"role": "user", "content": "hi"}], "%s": ' % gen.get("field", "").encode()
    if kind == "messages":
        return json.dumps({"messages": hi * gen["count"]}).encode()
    if kind == "big_content":
        return json.dumps({"messages": [{"role": "user", "content": "x" * gen["bytes"]}]}).encode()
    if kind == "long_model":
        return json.dumps({"messages": hi, "model": "m" * gen["chars"]}).encode()
    if kind == "nested_arrays":
        nested = b"[" * gen["depth"] + b"]" * gen["depth"]
        return prefix + nested + b"}"
    if kind == "nested_objects":
        nested = b'{"a": ' * gen["depth"] + b"1" + b"}" * gen["depth"]
        return prefix + nested + b"}"
    if kind == "chunked_zeros":
        piece = b"0" * 65536
        count = gen["bytes"] // len(piece) + 1
        return b"%x\r\n%s\r\n" % (len(piece), piece) * count + b"0\r\n\r\n"
    raise ValueError(f"unknown generator {kind}")


def body_of(case: dict[str, Any]) -> bytes | None:
    if "json" in case:
        return json.dumps(case["json"]).encode()
    if "text" in case:
        return case["text"].encode()
    if "b64" in case:
        return base64.b64decode(case["b64"])
    if "gen" in case:
        return generated(case["gen"])
    return None


def send(server: BmoServer, case: dict[str, Any]) -> tuple[int, httpx.Headers, bytes]:
    body = body_of(case)
    if "raw" in case:
        head = fill(expand(case["raw"]), server).replace("{len}", str(len(body or b"")))
        received, _ = raw_exchange(server.port, head.encode("latin-1") + (body or b""), wait=15)
        (status, headers, content), *_ = parse_responses(received)
        return status, httpx.Headers(headers), content
    headers = {k: fill(expand(v), server) for k, v in case.get("headers", {}).items()}
    auth = case.get("auth", "Bearer {token}")
    if auth is not None:
        headers["Authorization"] = fill(auth, server)
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    response = httpx.request(
        case.get("method", "POST"),
        server.base_url + expand(case.get("path", "/v1/chat/completions")),
        content=body,
        headers=headers,
        timeout=60,
    )
    return response.status_code, response.headers, response.content


def fired_count(server: BmoServer) -> int:
    return sum(1 for r in server.records() if r["msg"] == "openai_compat.fired")


def sentinel(server: BmoServer, name: str) -> str:
    """A good request after the case: once its records are written, the case's would be too."""
    response = httpx.get(
        server.base_url + "/v1/models", headers={**server.headers, "User-Agent": f"sentinel/{name}"}
    )
    request_id = response.headers["x-request-id"]
    records_of(server, request_id)
    return request_id


def _marked(case: dict[str, Any]) -> Any:
    """`known_bug` in a case: a strict xfail naming the bug (it must fail until fixed)."""
    if case.get("known_bug"):
        mark = pytest.mark.xfail(reason=case["known_bug"], strict=True)
        return pytest.param(case, id=case["name"], marks=mark)
    return pytest.param(case, id=case["name"])


# ------------------------------------------------------------------ the corpus


def test_the_corpus_is_well_formed() -> None:
    names = [case["name"] for case in CASES + TOOL_ATTACKS]
    assert len(names) == len(set(names))
    for case in CASES:
        assert {"status", "outcome"} <= set(case["expect"]), case["name"]
        assert sum(k in case for k in ("json", "text", "b64", "gen")) <= 1, case["name"]


@pytest.mark.parametrize("case", [_marked(c) for c in CASES])
def test_bad_input(server: BmoServer, case: dict[str, Any]) -> None:
    expect = case["expect"]
    stderr_before = len(server.stderr())
    fired_before = fired_count(server)
    status, headers, content = send(server, case)
    assert status == expect["status"], (status, content[:500])
    assert status < 500
    assert b"Traceback" not in content
    if expect.get("allow"):  # the order of the methods varies
        assert sorted(headers.get("allow", "").split(", ")) == sorted(expect["allow"].split(", ")), headers
    if expect.get("layer") == "granian":  # refused by the HTTP server: bmo never saw a request
        assert "x-request-id" not in headers and content == b"", (headers, content)
        sentinel(server, case["name"])
        assert fired_count(server) == fired_before + 1  # the sentinel's, nothing for the case
    else:
        request_id = headers.get("x-request-id", "")
        assert REQUEST_ID.fullmatch(request_id), headers
        if status >= 400 and case.get("method") != "HEAD":
            error = assert_envelope(status, headers, content)
            for key in ("code", "param"):
                if key in expect:
                    assert error[key] == expect[key], error
            if "message" in expect:
                assert expect["message"] in error["message"], error
        records = assert_recorded_once(server, request_id, expect["outcome"])
        fired = next(r for r in records if r["msg"] == "openai_compat.fired")
        if "route" in expect:
            assert fired["route"] == expect["route"], fired
        if "client_ua_max" in expect:
            assert 0 < len(fired["client_ua"].encode()) <= expect["client_ua_max"], fired
        assert server.token not in json.dumps(records)
    new_stderr = server.stderr()[stderr_before:]
    assert "Traceback" not in new_stderr, new_stderr[-3000:]


# ------------------------------------------------------------------ tool-argument attacks


def _fill_args(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, path in places.items():
            value = value.replace("{" + key + "}", path)
        return value
    if isinstance(value, list):
        return [_fill_args(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _fill_args(v, places) for k, v in value.items()}
    return value


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("attack", [_marked(a) for a in TOOL_ATTACKS])
def test_tool_argument_attack(
    server: BmoServer, upstream: FakeOpenAI, outside: Path, module_root: Path, attack: dict[str, Any]
) -> None:
    places = {
        "outside": str(outside),
        "workspace": str(server.workspace),
        "root": str(module_root),
        "secret": SECRET,
    }
    stderr_before = len(server.stderr())
    loop = server.workspace / "link_loop"
    if attack.get("symlink_loop"):  # only for its case: a loop breaks every directory walk
        os.symlink(loop, loop)
    try:
        _attack(server, upstream, outside, attack, places)
    finally:
        if os.path.lexists(loop):
            loop.unlink()
    new_stderr = server.stderr()[stderr_before:]
    assert "Traceback" not in new_stderr, new_stderr[-3000:]


def _attack(
    server: BmoServer,
    upstream: FakeOpenAI,
    outside: Path,
    attack: dict[str, Any],
    places: dict[str, str],
) -> None:
    arguments = json.dumps(_fill_args(attack["arguments"], places))
    call_id = f"call_{attack['name'].replace('-', '_')}"
    before_outside = _snapshot(outside)
    upstream.script(ToolCalls([(call_id, attack["tool"], arguments)]), Text("Done."))
    seen = len(upstream.requests)
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "up/fake-model", "messages": [{"role": "user", "content": f"do {attack['name']}"}]},
        headers=server.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].endswith("Done.")
    request_id = response.headers["x-request-id"]
    assert_recorded_once(server, request_id, "final_answer")

    follow_up = upstream.requests[seen + 1]["body"]["messages"]  # the model call after the tool ran
    (result,) = [m for m in follow_up if m["role"] == "tool" and m["tool_call_id"] == call_id]
    content = result["content"]
    expected = attack["expect"]
    if expected == "refused":
        assert content.startswith("error:"), content
    elif expected == "ok":
        assert not content.startswith("error:"), content
    if "result_contains" in attack:
        assert attack["result_contains"] in content, content
    for forbidden in attack.get("forbidden", []):
        assert _fill_args(forbidden, places) not in content, content
    assert "Traceback" not in content

    events = httpx.get(
        f"{server.base_url}/v1/openai-compat/runs/{request_id}/events", headers=server.headers
    ).json()["data"]
    asked = [e["data"] for e in events if e["type"] == "PermissionAsked"]
    if expected == "asked_and_denied":  # bash under chat_only: asked, never run unasked
        assert [a["tool"] for a in asked] == ["bash"], events
        assert json.loads(asked[0]["arguments"]) == json.loads(arguments)  # the exact command is shown
        decided = [e["data"] for e in events if e["type"] == "PermissionDecided"]
        assert [(d["decision"], d["decided_by"]) for d in decided] == [("deny", "timeout")]
    else:
        assert asked == [], events
    called = [e["data"] for e in events if e["type"] == "ToolCalled"]
    assert [(c["name"], c["ok"]) for c in called] == [(attack["tool"], expected == "ok")], called

    for path in attack.get("must_not_exist", []):
        assert not os.path.lexists(_fill_args(path, places)), path
    for path in attack.get("must_exist", []):
        assert os.path.exists(_fill_args(path, places)), path
    assert _snapshot(outside) == before_outside  # nothing outside the workspace changed
    assert (outside / "secret.txt").read_text() == f"{SECRET}\n"
