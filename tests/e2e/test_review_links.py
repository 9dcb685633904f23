"""The question reaches the person in the chat: streamed block, capability links, review page, allow_session.

A real `bmo serve`, the scripted upstream choosing the tool calls, real HTTP
streams read as they arrive; the links are followed exactly as a browser would
(no bearer token).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import BmoServer, free_port
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls

LINK = re.compile(r"\[Review and allow\]\((?P<review>[^)]+)\) · \[Deny\]\((?P<deny>[^)]+)\)")


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


def config(upstream: FakeOpenAI, port: int, *, timeout_s: float = 60, show_activity: bool = True) -> str:
    return (
        f'[options.openai_compat]\ntool_policy = "chat_only"\npermission_timeout_s = {timeout_s}\n'
        f'public_url = "http://127.0.0.1:{port}"\nshow_tool_activity = {str(show_activity).lower()}\n'
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-up"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 10\n'
    )


class StreamReader:
    """A streaming chat read in a thread: the content so far is visible while the run waits."""

    def __init__(self, server: BmoServer, text: str, session: str | None = None) -> None:
        self.content = ""
        self.done = threading.Event()
        self.request_id = ""
        headers = {**server.headers, **({"X-BMO-Session-Id": session} if session else {})}
        body = {"model": "up/fake-model", "stream": True, "messages": [{"role": "user", "content": text}]}
        self._args = (server.base_url, headers, body)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        base, headers, body = self._args
        try:
            with httpx.stream(
                "POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=120
            ) as r:
                self.request_id = r.headers.get("x-request-id", "")
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices", []):
                            self.content += choice["delta"].get("content") or ""
        finally:
            self.done.set()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        while time.monotonic() < deadline:
            found = regex.search(self.content)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{regex.pattern!r} never streamed; got:\n{self.content}")

    def finish(self, timeout: float = 60) -> str:
        assert self.done.wait(timeout), "the stream never ended"
        return self.content


def status_of(server: BmoServer, question_id: str) -> str:
    with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
        pending = {q["question_id"] for q in h.get("/v1/permissions").json()["data"]}
    return "pending" if question_id in pending else "not pending"


def question_id_of(url: str) -> str:
    return url.split("/review/")[1].split("?")[0]


def token_of(url: str) -> str:
    return url.split("token=")[1].split("&")[0]


def press(url: str, decision: str, token: str) -> httpx.Response:
    """Submit the page's form as a browser does: url-encoded, no Authorization header."""
    return httpx.post(url.split("?")[0], data={"token": token, "decision": decision}, timeout=30)


def test_links_are_bound_to_their_question_and_decide_once(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    port = free_port()
    server = make_server(config_text=config(upstream, port, show_activity=False), port=port)
    long_tail = "x" * 3000
    upstream.script(
        ToolCalls([("a", "bash", json.dumps({"command": f"echo run-a > a.txt # {long_tail}"}))]),
        ToolCalls([("b", "bash", json.dumps({"command": "echo run-b > b.txt"}))]),
        Text("done"),
        Text("done"),
    )
    first = StreamReader(server, "run the first command with bash")
    links_a = first.wait_for(LINK)
    second = StreamReader(server, "run the second command with bash")
    links_b = second.wait_for(LINK)
    review_a, deny_b = links_a["review"], links_b["deny"]
    qa, qb = question_id_of(review_a), question_id_of(deny_b)
    assert qa != qb
    # the block: full arguments in a fenced block, time left, shown with show_tool_activity = false
    assert long_tail in first.content and "answer within" in first.content and "```json" in first.content
    # GET shows everything and decides nothing, without a bearer token
    page = httpx.get(review_a, timeout=30)
    assert page.status_code == 200, page.text
    assert long_tail in page.text and "Allow once" in page.text and "rest of this session" in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert status_of(server, qa) == "pending"
    deny_page = httpx.get(deny_b, timeout=30)
    assert deny_page.status_code == 200 and 'value="deny" autofocus' in deny_page.text
    # a token for A does not decide B, and a forged one decides nothing
    crossed = press(deny_b, "allow", token_of(review_a))
    assert crossed.status_code == 403 and "not valid for this question" in crossed.text
    forged = press(review_a, "allow", token_of(review_a)[:-3] + "AAA")
    assert forged.status_code == 403
    assert status_of(server, qa) == status_of(server, qb) == "pending"
    # the right token decides once
    allowed = press(review_a, "allow", token_of(review_a))
    assert allowed.status_code == 200 and "Allowed once" in allowed.text
    reused = press(review_a, "deny", token_of(review_a))
    assert reused.status_code == 409 and "already answered" in reused.text
    denied = press(deny_b, "deny", token_of(deny_b))
    assert denied.status_code == 200 and "Denied" in denied.text
    text_a, text_b = first.finish(), second.finish()
    assert "✅ Allowed by the operator (link)." in text_a
    assert "⛔ Denied by the operator (link)." in text_b
    assert (workspace / "a.txt").read_text() == "run-a\n" and not (workspace / "b.txt").exists()
    # events record how it was decided and what digest; no token is stored anywhere
    with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
        events = h.get(f"/v1/openai-compat/runs/{first.request_id}/events").json()["data"]
    decided = next(e["data"] for e in events if e["type"] == "PermissionDecided")
    asked = next(e["data"] for e in events if e["type"] == "PermissionAsked")
    assert decided["decided_via"] == "link" and decided["digest"] == asked["digest"]
    token = token_of(review_a)
    stored = b"".join(
        p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file() and p.name != "review_secret"
    )
    assert token.split(".")[1].encode() not in stored  # never in an event, record, log or read model


def test_an_expired_link_is_a_clear_page(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    port = free_port()
    server = make_server(config_text=config(upstream, port, timeout_s=2), port=port)
    upstream.script(ToolCalls([("a", "bash", '{"command": "touch late.txt"}')]), Text("too late"))
    reader = StreamReader(server, "touch late.txt with bash")
    review = reader.wait_for(LINK)["review"]
    text = reader.finish()
    assert "⛔ Denied: timed out after 2 s." in text
    late = press(review, "allow", token_of(review))
    assert late.status_code == 410 and "expired" in late.text
    shown = httpx.get(review, timeout=30)
    assert shown.status_code == 410
    assert not (workspace / "late.txt").exists()
    missing = httpx.get(review.split("?")[0], timeout=30)
    assert missing.status_code == 403 and "no token" in missing.text
    unknown = httpx.get(f"{server.base_url}/review/{'0' * 32}?token=1.x", timeout=30)
    assert unknown.status_code == 404 and "No such question" in unknown.text


def test_allow_session_lets_the_same_tool_run_in_that_session_only(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    port = free_port()
    server = make_server(config_text=config(upstream, port), port=port)
    upstream.script(
        ToolCalls([("a", "bash", '{"command": "touch one.txt"}')]),
        Text("one"),
        ToolCalls([("b", "bash", '{"command": "touch two.txt"}')]),
        Text("two"),
        ToolCalls([("c", "bash", '{"command": "touch three.txt"}')]),
        Text("three"),
    )
    first = StreamReader(server, "touch one.txt with bash", session="chat-s1")
    qid = question_id_of(first.wait_for(LINK)["review"])
    answered = httpx.post(
        f"{server.base_url}/v1/permissions/{qid}", json={"decision": "allow_session"}, headers=server.headers
    )
    assert answered.status_code == 200 and answered.json()["scope"] == "session"
    assert "✅ Allowed for the rest of this session by the operator (http)." in first.finish()
    # a resumed stream replays the block (fresh links) and the decision line
    replay = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "up/fake-model", "stream": False, "messages": [{"role": "user", "content": "x"}]},
        headers={**server.headers, "X-BMO-Session-Id": "chat-s1", "X-BMO-Resume-Run-Id": first.request_id},
        timeout=30,
    )
    replayed = replay.json()["choices"][0]["message"]["content"]
    assert "Permission needed: `bash`" in replayed and LINK.search(replayed)
    assert "✅ Allowed for the rest of this session by the operator (http)." in replayed
    second = StreamReader(server, "touch two.txt with bash", session="chat-s1")
    assert second.finish().endswith("two") and (workspace / "two.txt").exists()
    assert "Permission needed" not in second.content
    with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
        events = h.get(f"/v1/openai-compat/runs/{second.request_id}/events").json()["data"]
    assert not [e for e in events if e["type"] == "PermissionAsked"]
    # another session still asks
    other = StreamReader(server, "touch three.txt with bash", session="chat-s2")
    other_q = question_id_of(other.wait_for(LINK)["review"])
    httpx.post(
        f"{server.base_url}/v1/permissions/{other_q}", json={"decision": "deny"}, headers=server.headers
    )
    other.finish()
    assert not (workspace / "three.txt").exists()


def test_a_question_whose_run_ends_is_recorded_as_run_ended(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    port = free_port()
    server = make_server(config_text=config(upstream, port), port=port)
    upstream.script(ToolCalls([("a", "bash", '{"command": "touch gone.txt"}')]), Text("never"))
    body = {
        "model": "up/fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "touch gone.txt"}],
    }
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=body, headers=server.headers, timeout=60
    ) as response:
        request_id = response.headers["x-request-id"]
        seen = ""
        for line in response.iter_lines():
            seen += line
            if "Review and allow" in seen:
                break  # the client leaves while the question waits
    deadline = time.monotonic() + 30
    decided: list[dict[str, Any]] = []
    while not decided and time.monotonic() < deadline:
        with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
            events = h.get(f"/v1/openai-compat/runs/{request_id}/events").json()["data"]
        decided = [e["data"] for e in events if e["type"] == "PermissionDecided"]
        time.sleep(0.1)
    assert decided and decided[0]["decided_via"] == "run_ended" and decided[0]["decision"] == "deny"
    assert not (workspace / "gone.txt").exists()
