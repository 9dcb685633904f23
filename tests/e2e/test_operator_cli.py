"""The operator CLI: config shows, the ledger and the log recipes, with and without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.server import BmoServer
from tests.fakes.openai_upstream import FakeOpenAI, Slow, Text


def bmo(
    args: list[str], cwd: Path, data: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "BMO_GLOBAL_DATA": str(data),
        "BMO_GLOBAL_CONFIG": str(data.parent / "global-config"),
    }
    full_env.pop("BMO_AUTH_TOKEN", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_show_openai_compat_reflects_the_layered_config(tmp_path: Path, workspace: Path) -> None:
    data = tmp_path / "data"
    global_dir = tmp_path / "global-config"
    global_dir.mkdir()
    (global_dir / "bmo.toml").write_text(
        '[options.openai_compat]\ntool_policy = "auto_approve"\nmax_queue_depth = 7\n'
        '[providers.up]\ntype = "openai"\nbase_url = "http://127.0.0.1:1/v1"\napi_key = "sk-very-secret"\n'
        'models = ["m1", "m2"]\n'
    )
    (workspace / "bmo.toml").write_text('[options.openai_compat]\nambiguity_action = "research"\n')
    extra = tmp_path / "extra.toml"
    extra.write_text('[options.openai_compat]\nmodels = ["up/m2", "bmo/local"]\n')
    result = bmo(["config", "show-openai-compat", "--json", "--config", str(extra)], workspace, data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tool_policy"] == "auto_approve" and report["max_queue_depth"] == 7
    assert report["ambiguity_action"] == "research"
    assert report["advertised_models"] == ["up/m2", "bmo/local"]
    assert report["config_files"] == [str(global_dir / "bmo.toml"), str(workspace / "bmo.toml"), str(extra)]
    assert report["bind"]["auth"] == "(check at serve-time)" and report["bind"]["loopback"] is True
    assert "sk-very-secret" not in result.stdout
    alias = bmo(["config", "show-open-webui", "--config", str(extra)], workspace, data)
    assert (
        alias.returncode == 0 and "auto_approve" in alias.stdout and "(check at serve-time)" in alias.stdout
    )
    assert "sk-very-secret" not in alias.stdout


def test_show_openai_compat_warns_about_an_unsafe_bind(tmp_path: Path, workspace: Path) -> None:
    (workspace / "bmo.toml").write_text(
        '[options.http_server]\naddr = "0.0.0.0:9000"\nauth_token = "tok-secret-123"\n'
    )
    result = bmo(["config", "show-openai-compat"], workspace, tmp_path / "data")
    assert result.returncode == 0
    assert "not loopback" in result.stdout and "token configured" in result.stdout
    assert "tok-secret-123" not in result.stdout
    as_json = json.loads(bmo(["config", "show-openai-compat", "--json"], workspace, tmp_path / "data").stdout)
    assert as_json["bind"]["loopback"] is False and "warning" in as_json["bind"]


def test_bad_config_is_a_clear_cli_error(tmp_path: Path, workspace: Path) -> None:
    (workspace / "bmo.toml").write_text('[options.openai_compat]\nenabled = "maybe"\n')
    result = bmo(["config", "show-openai-compat"], workspace, tmp_path / "data")
    assert result.returncode == 2 and "options.openai_compat.enabled" in result.stderr


def test_runs_and_logs_recipes(make_server: Callable[..., BmoServer], workspace: Path) -> None:
    with FakeOpenAI() as upstream:
        server = make_server(
            config_text=(
                f'[options]\nmodel = "up/fake-model"\n[providers.up]\ntype = "openai"\n'
                f'base_url = "{upstream.base_url}"\napi_key = "k"\nmodels = ["fake-model"]\n'
            )
        )
        upstream.script(Slow(1.5, Text("slow")), Text("queued one"))
        headers = {**server.headers, "X-BMO-Session-Id": "ops-1"}
        body = {"messages": [{"role": "user", "content": "hello there"}]}
        first = threading.Thread(
            target=lambda: httpx.post(
                f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30
            )
        )
        first.start()
        while not upstream.requests:
            time.sleep(0.02)
        queued = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert queued.status_code == 409
        first.join(30)
        plain = httpx.post(
            f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers, timeout=30
        )
        queued_run = queued.json()["error"]["run_id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(r.get("request_id") == queued_run and r.get("terminal") for r in server.records()):
                break
            time.sleep(0.1)
        server.stop()
    data = server.data_dir
    out = bmo(["logs", "--outcome", "queued"], workspace, data)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["request_id"], r["outcome"]) for r in lines] == [(queued.headers["x-request-id"], "queued")]
    by_request = bmo(["logs", "--request-id", plain.headers["x-request-id"]], workspace, data)
    assert [json.loads(line)["msg"] for line in by_request.stdout.splitlines()] == [
        "openai_compat.fired",
        "openai_compat.action",
    ]
    by_session = [
        json.loads(line)
        for line in bmo(["logs", "--session-id", "ops-1"], workspace, data).stdout.splitlines()
    ]
    assert by_session and all(r["session_id"] == "ops-1" for r in by_session)
    assert {r["request_id"] for r in by_session} >= {queued.headers["x-request-id"], queued_run}
    tail = bmo(["logs", "--tail", "2", "--msg", "openai_compat.fired"], workspace, data)
    assert len(tail.stdout.splitlines()) == 2
    pretty = bmo(["logs", "--pretty", "--outcome", "queued"], workspace, data)
    assert "queued" in pretty.stdout and not pretty.stdout.startswith("{")
    listed = bmo(["runs", "list", "--json", "--session", "ops-1"], workspace, data)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["outcome"] for r in rows} == {"final_answer", "queued"} and len(rows) == 3
    timeline = bmo(["runs", "events", queued_run], workspace, data)
    types = [json.loads(line)["type"] for line in timeline.stdout.splitlines()]
    assert types[0] == "Fired" and "Queued" in types and types[-1] == "Finished"
    ledger = json.loads(bmo(["config", "show-run-ledger", "--json"], workspace, data).stdout)
    assert ledger["runs"] >= 4 and ledger["routes"]["chat_completions"] >= 3
    missing = bmo(["runs", "events", "0" * 32], workspace, data)
    assert missing.returncode == 1 and "no run" in missing.stderr
