"""`bmo serve` refuses unsafe binds; `bmo projections rebuild` replays the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.server import BmoServer


def run_bmo(
    args: list[str], tmp_path: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("BMO_AUTH_TOKEN", None)
    env["BMO_GLOBAL_DATA"] = str(tmp_path / "data")
    env["BMO_GLOBAL_CONFIG"] = str(tmp_path / "cfg")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_serve_without_token_or_allow_no_auth_refuses_and_names_both(tmp_path: Path) -> None:
    result = run_bmo(["serve", "--addr", "127.0.0.1:1"], tmp_path)
    assert result.returncode != 0
    assert "--auth-token" in result.stderr and "--allow-no-auth" in result.stderr


def test_allow_no_auth_on_a_public_address_is_refused(tmp_path: Path) -> None:
    result = run_bmo(["serve", "--allow-no-auth", "--addr", "0.0.0.0:1"], tmp_path)
    assert result.returncode != 0
    assert "non-loopback" in result.stderr


def test_bad_config_refuses_to_start_naming_file_key_and_values(tmp_path: Path) -> None:
    (tmp_path / "bmo.toml").write_text('[options.openai_compat]\ntool_policy = "yolo"\n')
    result = run_bmo(["serve", "--allow-no-auth", "--addr", "127.0.0.1:1"], tmp_path)
    assert result.returncode != 0
    assert "bmo.toml" in result.stderr
    assert "options.openai_compat.tool_policy" in result.stderr
    assert "chat_only" in result.stderr and "auto_approve" in result.stderr


def test_token_from_environment_is_enforced(tmp_path: Path, workspace: Path) -> None:
    server = BmoServer(workspace=workspace, data_dir=tmp_path / "data", token=None)
    server.extra_args = ()
    env_token = "env-token-abcdef"
    original_env = server.env

    def env_with_token() -> dict[str, str]:
        env = original_env()
        env["BMO_AUTH_TOKEN"] = env_token
        return env

    server.env = env_with_token  # type: ignore[method-assign]
    server.command = lambda: [  # type: ignore[method-assign]
        sys.executable,
        "-m",
        "app",
        "serve",
        "--addr",
        f"127.0.0.1:{server.port}",
    ]
    server.start()
    try:
        assert httpx.get(server.base_url + "/v1/models").status_code == 401
        ok = httpx.get(server.base_url + "/v1/models", headers={"Authorization": f"Bearer {env_token}"})
        assert ok.status_code == 200
    finally:
        server.stop()


def test_projections_rebuild_replays_every_event(tmp_path: Path, workspace: Path) -> None:
    server = BmoServer(workspace=workspace, data_dir=tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, headers=server.headers) as h:
            h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}]})
            before = h.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
    finally:
        server.stop()
    result = run_bmo(["projections", "rebuild"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rebuilt" in result.stdout
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "read_models.db") as conn:
        ids = {
            row[0]
            for row in conn.execute(
                "SELECT request_id FROM openai_compat_runs WHERE route = 'chat_completions'"
            )
        }
    assert ids == {r["request_id"] for r in before}


def test_dirs_prints_the_data_locations(tmp_path: Path) -> None:
    result = run_bmo(["dirs"], tmp_path)
    assert result.returncode == 0
    assert str(tmp_path / "data" / "events.db") in result.stdout
    assert str(tmp_path / "data" / "logs" / "bmo.jsonl") in result.stdout


def test_serve_recovers_runs_left_open_by_a_crash(tmp_path: Path, workspace: Path) -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    from app.commands import fire_run
    from app.commands.fire_run import FireRun
    from app.events.run import RunState
    from app.events.select import open_event_store

    data = tmp_path / "data"
    store = open_event_store(data)
    run_id = uuid4()
    store.save(
        fire_run.decide(
            RunState(run_id),
            FireRun(
                run_id=run_id,
                at=datetime.now(UTC),
                session_id="",
                route="chat_completions",
                model="bmo/local",
                stream=True,
                tool_policy="chat_only",
                ambiguity_action="ask",
                is_session_reuse=False,
                client_ua="x",
            ),
        )
    )
    store.close()
    server = BmoServer(workspace=workspace, data_dir=data).start()
    try:
        runs = httpx.get(
            server.base_url + "/v1/openai-compat/runs",
            params={"outcome": "error_500"},
            headers=server.headers,
        ).json()["data"]
        assert [(r["request_id"], r["error"]) for r in runs] == [(run_id.hex, "interrupted")]
        assert "recovered 1 interrupted run" in server.stderr()
    finally:
        server.stop()


def _bmo_popen(args: list[str], tmp_path: Path, data: str = "data2") -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("BMO_AUTH_TOKEN", None)
    env["BMO_GLOBAL_DATA"] = str(tmp_path / data)
    env["BMO_GLOBAL_CONFIG"] = str(tmp_path / "cfg")
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int | None, str]:
    """The exit code and stderr; a process still running after `timeout` is stopped (code None)."""
    import signal

    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        return None, err


def test_a_second_server_on_a_used_port_is_refused_and_the_first_keeps_auth(
    tmp_path: Path, workspace: Path
) -> None:
    first = BmoServer(workspace=workspace, data_dir=tmp_path / "data").start()
    try:
        second = _bmo_popen(["serve", "--addr", f"127.0.0.1:{first.port}", "--allow-no-auth"], tmp_path)
        code, err = _finish(second)
        assert code is not None and code != 0, f"second server kept running: {err}"
        assert f"127.0.0.1:{first.port}" in err and "in use" in err
        assert "Traceback" not in err
        statuses = [httpx.get(first.base_url + "/v1/models").status_code for _ in range(10)]
        assert statuses == [401] * 10
        ok = httpx.get(first.base_url + "/v1/models", headers=first.headers)
        assert ok.status_code == 200
    finally:
        first.stop()


def test_a_host_name_is_resolved_and_judged_on_the_address(tmp_path: Path, workspace: Path) -> None:
    from tests.e2e.server import free_port

    port = free_port()
    proc = _bmo_popen(["serve", "--addr", f"localhost:{port}", "--allow-no-auth"], tmp_path)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ready, f"bmo serve --addr localhost:{port} did not serve"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
    finally:
        _, err = _finish(proc, timeout=0.1)
    assert "Traceback" not in err
    bad = run_bmo(["serve", "--addr", "no-such-host.invalid:9", "--allow-no-auth"], tmp_path)
    assert bad.returncode == 2 and "no-such-host.invalid" in bad.stderr and "Traceback" not in bad.stderr


def test_a_host_name_resolving_off_loopback_needs_auth() -> None:
    from app.cli.serve import decide_bind
    from app.config import Settings

    def resolve(host: str, port: int) -> list[str]:
        return {"lan.example": ["192.0.2.7"], "lo.example": ["127.0.0.1", "::1"]}[host]

    settings = Settings()
    try:
        decide_bind(settings, addr="lan.example:9", token=None, allow_no_auth=True, env={}, resolve=resolve)
        raise AssertionError("no-auth on a name resolving off loopback was accepted")
    except ValueError as exc:
        assert "non-loopback" in str(exc) and "192.0.2.7" in str(exc)
    lan = decide_bind(settings, addr="lan.example:9", token="t", allow_no_auth=False, env={}, resolve=resolve)
    assert (lan.host, lan.port) == ("192.0.2.7", 9) and lan.warnings
    lo = decide_bind(settings, addr="lo.example:9", token=None, allow_no_auth=True, env={}, resolve=resolve)
    assert lo.host == "127.0.0.1" and not lo.warnings


def test_a_default_model_no_provider_serves_is_refused_at_startup(tmp_path: Path) -> None:
    (tmp_path / "bmo.toml").write_text(
        '[options]\nmodel = "ollama/qwen"\n[providers.up]\ntype = "openai"\n'
        'base_url = "http://127.0.0.1:1/v1"\nmodels = ["m1"]\n'
    )
    result = run_bmo(["serve", "--allow-no-auth", "--addr", "127.0.0.1:1"], tmp_path)
    assert result.returncode == 2
    assert "bmo.toml" in result.stderr and "options.model" in result.stderr
    assert "ollama/qwen" in result.stderr and "bmo/local" in result.stderr and "up/m1" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_banner_says_what_an_operator_needs(tmp_path: Path, workspace: Path) -> None:
    server = BmoServer(
        workspace=workspace,
        data_dir=tmp_path / "data",
        config_text='[options.openai_compat]\ntool_policy = "auto_approve"\n',
    ).start()
    try:
        banner = server.stderr()
    finally:
        server.stop()
    assert f"workspace      {workspace}" in banner
    assert str(workspace / "bmo.toml") in banner
    assert "models         bmo/local" in banner
    assert "tool policy    auto_approve" in banner
    assert "auth           bearer token" in banner
    assert f"http://127.0.0.1:{server.port}/v1" in banner


def test_version_is_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_bmo(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == version("bmo") == "0.1.0"
