"""Tool confinement through a real `bmo serve`: secrets, time and output bounds, orphans.

The scripted upstream chooses the tool calls (under `auto_approve`, so nothing
waits for an operator); every assertion reads what a client, the run's events,
the JSON log and the upstream model actually received.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Text, ToolCalls

TOKEN = "tok-e2e-7c1f0a93d5b24e68"  # distinctive, so any copy is easy to find
PROVIDER_KEY = "sk-prov-3e9d2c71b0a84f56"
SERVER_SECRET = "srv-secret-52af19c07e"  # an env value of a secret-looking name the server holds


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


def config(upstream: FakeOpenAI, extra: str = "") -> str:
    return (
        '[options.openai_compat]\ntool_policy = "auto_approve"\nambiguity_action = "code"\n'
        "permission_timeout_s = 5\nmax_steps = 40\n"
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\n'
        'api_key = "${UP_API_KEY}"\nmodels = ["fake-model"]\nmax_retries = 0\ntimeout_s = 30\n' + extra
    )


MCP = (
    '\n[mcp.fake]\ntype = "stdio"\ncommand = "python"\nargs = ["-m", "tests.fakes.mcp_server"]\n'
    'env = { PYTHONPATH = "${PYTHONPATH}" }\ntimeout = 20\n'
)


class EnvTokenServer(BmoServer):
    """The token handed over in BMO_AUTH_TOKEN instead of --auth-token."""

    def command(self) -> list[str]:
        return [part for part in super().command() if part not in ("--auth-token", self.token)]


def ask(server: BmoServer, text: str, timeout: float = 120, stream: bool = False) -> tuple[str, str]:
    """(raw response body, request id) of one chat completion (SSE text when streamed)."""
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers=server.headers,
        json={"model": "up/fake-model", "messages": [{"role": "user", "content": text}], "stream": stream},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    return response.text, response.headers["x-request-id"]


def events_text(server: BmoServer, request_id: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        response = httpx.get(
            f"{server.base_url}/v1/openai-compat/runs/{request_id}/events", headers=server.headers, timeout=10
        )
        if (response.status_code == 200 and '"Finished"' in response.text) or time.monotonic() > deadline:
            return response.text
        time.sleep(0.1)


def tool_results(upstream: FakeOpenAI) -> list[str]:
    return [m["content"] for r in upstream.requests for m in r["body"]["messages"] if m["role"] == "tool"]


SECRET_PROBES = [
    ("bash", {"command": "printenv; echo ---; env"}),
    ("bash", {"command": "printenv BMO_AUTH_TOKEN UP_API_KEY SERVER_SIDE_SECRET_TOKEN; echo exit=$?"}),
    ("bash", {"command": "tr '\\0' '\\n' < /proc/$PPID/environ; tr '\\0' ' ' < /proc/$PPID/cmdline"}),
    # the granian main process (bmo serve itself) and every bmo process the tool can see
    (
        "bash",
        {
            "command": "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; "
            "tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -a -i -e tok -e key -e secret"
        },
    ),
    ("bash", {"command": "cat bmo.toml; ps -eo pid,args"}),
    ("read_file", {"path": "/proc/self/environ"}),
    ("search", {"pattern": "TOKEN|KEY", "path": "/proc/self"}),
    ("kubectl", {"verb": "get", "args": ["pods", "-v=9"]}),
    ("kubectl", {"verb": "get", "args": ["pods"]}),
    ("mcp__fake__environ", {}),
]


@pytest.mark.parametrize(("token_via", "stream"), [("flag", False), ("env", True)])
def test_no_tool_kind_sees_a_secret(
    tmp_path: Path, workspace: Path, upstream: FakeOpenAI, token_via: str, stream: bool
) -> None:
    cls = BmoServer if token_via == "flag" else EnvTokenServer
    extra_env = {"UP_API_KEY": PROVIDER_KEY, "SERVER_SIDE_SECRET_TOKEN": SERVER_SECRET}
    if token_via == "env":
        extra_env["BMO_AUTH_TOKEN"] = TOKEN
    server = cls(
        workspace=workspace,
        data_dir=tmp_path / "data",
        token=TOKEN,
        config_text=config(upstream, MCP),
        extra_env=extra_env,
    ).start()
    try:
        calls = [(f"c{i}", name, json.dumps(args)) for i, (name, args) in enumerate(SECRET_PROBES)]
        upstream.script(ToolCalls(calls), Text("done"))
        answer, request_id = ask(server, "show me your environment", stream=stream)
        assert "[redacted]" in answer  # the probes did find secrets, and the client saw them redacted
        events = events_text(server, request_id)
        results = tool_results(upstream)
        assert len(results) == len(SECRET_PROBES)
        # the probes really ran and saw things: the base environment and the MCP server's own
        assert any("PATH=" in r for r in results[:1]), results[0][:500]
        assert "PYTHONPATH=" in results[-1], results[-1][:500]
        server.stop()  # flush the JSON log
        log = server.log_path.read_text()
        bodies = json.dumps([r["body"] for r in upstream.requests])
        for secret in (TOKEN, PROVIDER_KEY, SERVER_SECRET):
            for where, text in {"answer": answer, "events": events, "log": log, "upstream": bodies}.items():
                assert secret not in text, (secret, where)
        # the tool's environment is the base: no BMO_* names (but its group marker), no keys
        names = {line.split("=", 1)[0] for line in results[0].split("---")[0].splitlines() if "=" in line}
        assert {n for n in names if n.startswith("BMO_")} == {"BMO_TOOL_GROUP"}, names
        assert not names & {"UP_API_KEY", "SERVER_SIDE_SECRET_TOKEN", "PYTHONPATH"}, names
    finally:
        server.stop()


def test_serving_processes_hold_no_plaintext_token(tmp_path: Path, workspace: Path) -> None:
    """/proc/<pid>/environ and cmdline of `bmo serve` and its workers: digest only."""
    interpolated = '[options.http_server]\nauth_token = "${BMO_AUTH_TOKEN}"\n'
    cases = (
        (BmoServer, {}, None),
        (EnvTokenServer, {"BMO_AUTH_TOKEN": TOKEN}, None),
        (EnvTokenServer, {"BMO_AUTH_TOKEN": TOKEN}, interpolated),  # the documented config form
    )
    for cls, env, config_text in cases:
        server = cls(
            workspace=workspace,
            data_dir=tmp_path / "data",
            token=TOKEN,
            extra_env=env,
            config_text=config_text,
        ).start()
        try:
            assert server.proc is not None
            pids = [server.proc.pid, *_children(server.proc.pid)]
            assert len(pids) >= 2  # the main process and at least one worker
            for pid in pids:
                raw = Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()
                assert TOKEN.encode() not in raw, pid
            assert httpx.get(f"{server.base_url}/v1/models", headers=server.headers).status_code == 200
            assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
        finally:
            server.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


# ------------------------------------------------------------------ time bounds


def test_a_catastrophic_pattern_is_stopped_and_the_server_stays_responsive(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, workspace: Path
) -> None:
    (workspace / "victim.txt").write_text(("a" * 40 + "!\n") * 3)
    server = make_server(config_text=config(upstream), extra_env={"UP_API_KEY": PROVIDER_KEY})
    upstream.script(
        ToolCalls([("s1", "search", json.dumps({"pattern": "(a+)+$", "path": "victim.txt"}))]), Text("ok")
    )
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as probe_client:
            while not stop.is_set():
                started = time.monotonic()
                assert probe_client.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    try:
        ask(server, "search for it")
    finally:
        stop.set()
        prober.join(15)
    elapsed = time.monotonic() - started
    result = tool_results(upstream)[0]
    assert "timed out" in result and "backtrack" in result, result
    assert elapsed < 30, elapsed  # the 10 s deadline, not the pattern's exponential time
    assert len(latencies) > 20 and max(latencies) < 1.0, (len(latencies), max(latencies))


# ------------------------------------------------------------------ orphans


def _start_sleeping_tool(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> tuple[BmoServer, str]:
    """A server whose bash tool runs two `sleep`s: one in the background (a grandchild the
    parent-death signal does not reach) and one in the foreground."""
    marker = f"0.000{uuid.uuid4().int % 10**12:012d}"  # sleep adds its arguments up: a unique no-op
    server = make_server(config_text=config(upstream), extra_env={"UP_API_KEY": PROVIDER_KEY})
    command = f"sleep 300 {marker} & sleep 301 {marker}; echo never"
    upstream.script(ToolCalls([("b1", "bash", json.dumps({"command": command, "timeout_s": 600}))]))
    client = threading.Thread(target=lambda: _quietly(lambda: ask(server, "sleep", timeout=60)), daemon=True)
    client.start()
    # bash and both sleeps carry the marker in their command lines
    assert _wait_for(lambda: len(_processes_with(marker)) == 3, 30), _processes_with(marker)
    return server, marker


def _kill_9(server: BmoServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


def test_kill_9_leaves_no_tool_process_behind(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI
) -> None:
    server, marker = _start_sleeping_tool(make_server, upstream)
    _kill_9(server)
    assert _wait_for(lambda: not _processes_with(marker), 15), _processes_with(marker)
    make_server(config_text=config(upstream), extra_env={"UP_API_KEY": PROVIDER_KEY})
    assert not _processes_with(marker)


def test_the_next_start_reaps_what_survived_and_says_so(
    make_server: Callable[..., BmoServer], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    """Without the watchdog (killed first), the background sleep outlives the server; the
    next start's sweep kills it and reports it."""
    server, marker = _start_sleeping_tool(make_server, upstream)
    watchdogs = [p for p in _processes_with("process_guard.py") if str(tmp_path) in _cmdline(p)]
    assert watchdogs, "no watchdog process"
    for pid in watchdogs:
        os.kill(pid, signal.SIGKILL)
    _kill_9(server)
    assert _wait_for(lambda: len(_processes_with(marker)) == 2, 15)  # bash died; the sleeps did not
    again = make_server(config_text=config(upstream), extra_env={"UP_API_KEY": PROVIDER_KEY})
    assert _wait_for(lambda: not _processes_with(marker), 15), _processes_with(marker)
    assert marker in again.stderr() and "tool process(es) left by a server that died" in again.stderr()
    reaped = [r for r in again.records() if r.get("msg") == "tools.orphans_reaped"]
    assert reaped and any(marker in " ".join(r["commands"]) for r in reaped), reaped


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _quietly(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # the server is killed under the request on purpose
        fn()


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found
