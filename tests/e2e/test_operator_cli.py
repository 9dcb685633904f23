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


OWUI_UA = "Open-WebUI-test/0.12.4"


def _traffic(server: BmoServer, upstream: FakeOpenAI) -> dict[str, str]:
    """A chat, a title task, operator reads and a base URL without /v1; returns request ids."""
    ids: dict[str, str] = {}
    headers = {**server.headers, "User-Agent": OWUI_UA, "X-BMO-Session-Id": "chat-abc"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as h:
        upstream.script(Text("hi back"), Text('{"title": "Greeting"}'))
        ids["chat"] = h.post(
            "/v1/chat/completions",
            json={"model": "up/fake-model", "messages": [{"role": "user", "content": "hello"}]},
        ).headers["x-request-id"]
        ids["title"] = h.post(
            "/v1/chat/completions",
            headers={"X-OpenWebUI-Task": "title_generation"},
            json={"model": "up/fake-model", "messages": [{"role": "user", "content": "title please"}]},
        ).headers["x-request-id"]
        ids["posture"] = h.get("/v1/openai-compat/posture").headers["x-request-id"]
        ids["runs"] = h.get("/v1/openai-compat/runs").headers["x-request-id"]
        missing = h.get("/models")
        assert missing.status_code == 404 and "/v1" in missing.json()["error"]["message"]
        ids["no_v1"] = missing.headers["x-request-id"]
    return ids


def _server_with_upstream(make_server: Callable[..., BmoServer], upstream: FakeOpenAI) -> BmoServer:
    return make_server(
        config_text=(
            f'[options]\nmodel = "up/fake-model"\n[providers.up]\ntype = "openai"\n'
            f'base_url = "{upstream.base_url}"\napi_key = "k"\nmodels = ["fake-model"]\n'
        )
    )


def test_runs_list_answers_did_open_webui_reach_bmo(
    make_server: Callable[..., BmoServer], workspace: Path
) -> None:
    with FakeOpenAI() as upstream:
        server = _server_with_upstream(make_server, upstream)
        ids = _traffic(server, upstream)
        page = httpx.get(f"{server.base_url}/v1/openai-compat/runs", headers=server.headers).json()["data"]
        assert ids["posture"] in {r["request_id"] for r in page}  # the HTTP answer is unchanged
        client_only = httpx.get(
            f"{server.base_url}/v1/openai-compat/runs", params={"traffic": "client"}, headers=server.headers
        ).json()["data"]
        routes = {r["route"] for r in client_only}
        assert routes and not routes & {"posture", "runs_list", "run_events_list", "permissions"}
        assert {ids["chat"], ids["title"], ids["no_v1"]} <= {r["request_id"] for r in client_only}
        bad = httpx.get(
            f"{server.base_url}/v1/openai-compat/runs", params={"traffic": "clients"}, headers=server.headers
        )
        assert bad.status_code == 400 and "client" in bad.json()["error"]["message"]
        server.stop()
    data = server.data_dir
    table = bmo(["runs", "list"], workspace, data)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    for column in ("STARTED", "ID", "TASK", "CLIENT", "SESSION", "MODEL", "OUTCOME"):
        assert column in header
    assert ids["posture"][:12] not in table.stdout and ids["runs"][:12] not in table.stdout
    chat_row = next(r for r in rows if ids["chat"][:12] in r)
    assert OWUI_UA[:16] in chat_row and "chat-abc" in chat_row and "up/fake-model" in chat_row
    assert "final_answer" in chat_row
    title_row = next(r for r in rows if ids["title"][:12] in r)
    assert "title_generation" in title_row
    everything = bmo(["runs", "list", "--all"], workspace, data).stdout
    assert ids["posture"][:12] in everything and ids["runs"][:12] in everything
    for spelling in ("--session", "--session-id"):
        listed = bmo(["runs", "list", "--json", spelling, "chat-abc"], workspace, data)
        assert listed.returncode == 0, listed.stderr
        assert {json.loads(line)["request_id"] for line in listed.stdout.splitlines()} == {
            ids["chat"],
            ids["title"],
            ids["no_v1"],  # client traffic; the operator reads in the same session are left out
        }
        logged = bmo(["logs", spelling, "chat-abc", "--msg", "openai_compat.fired"], workspace, data)
        assert logged.returncode == 0, logged.stderr
        assert {json.loads(line)["request_id"] for line in logged.stdout.splitlines()} >= {ids["chat"]}
    fired = bmo(["logs", "--msg", "openai_compat.fired"], workspace, data).stdout
    assert ids["chat"] in fired and ids["posture"] not in fired and ids["runs"] not in fired
    fired_all = bmo(["logs", "--msg", "openai_compat.fired", "--all"], workspace, data).stdout
    assert ids["posture"] in fired_all and ids["runs"] in fired_all
    asked = bmo(["logs", "--request-id", ids["posture"][:12]], workspace, data).stdout
    assert ids["posture"] in asked  # one request asked for by id is shown whatever its route
    no_v1 = [
        json.loads(line)
        for line in bmo(["logs", "--request-id", ids["no_v1"]], workspace, data).stdout.splitlines()
    ]
    terminal = [r for r in no_v1 if r.get("terminal")]
    assert terminal and "/models" in terminal[0]["error"] and "must end in /v1" in terminal[0]["error"]


def test_twelve_character_ids_work_in_every_lookup(
    make_server: Callable[..., BmoServer], workspace: Path
) -> None:
    server = make_server()
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as h:
        first = h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}]})
        request_id = first.headers["x-request-id"]
        others = [h.get("/v1/models").headers["x-request-id"] for _ in range(20)]
    server.stop()
    data = server.data_dir
    short = request_id[:12]
    logged = bmo(["logs", "--request-id", short], workspace, data)
    assert logged.returncode == 0, logged.stderr
    assert [json.loads(line)["request_id"] for line in logged.stdout.splitlines()] == [request_id] * 2
    timeline = bmo(["runs", "events", short], workspace, data)
    assert timeline.returncode == 0, timeline.stderr
    assert json.loads(timeline.stdout.splitlines()[0])["type"] == "Fired"
    # 21 ids over 16 first digits: at least two share one, so a 1-digit prefix is ambiguous
    by_first: dict[str, list[str]] = {}
    for rid in [request_id, *others]:
        by_first.setdefault(rid[0], []).append(rid)
    prefix, shared = next((k, v) for k, v in by_first.items() if len(v) > 1)
    for args in (["runs", "events", prefix], ["logs", "--request-id", prefix]):
        ambiguous = bmo(args, workspace, data)
        assert ambiguous.returncode != 0, args
        assert "ambiguous" in ambiguous.stderr and all(rid[:12] in ambiguous.stderr for rid in shared)
    unknown = bmo(["logs", "--request-id", "ffffffffffffffff0000"], workspace, data)
    assert unknown.returncode == 1 and "no request" in unknown.stderr


def test_unknown_filter_values_are_refused_with_the_accepted_list(tmp_path: Path, workspace: Path) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "bmo.jsonl").write_text("")
    cases = [
        (["logs", "--outcome", "auth-failed"], "auth_failed"),
        (["runs", "list", "--outcome", "finished"], "final_answer"),
        (["runs", "list", "--route", "chat"], "chat_completions"),
    ]
    for args, accepted in cases:
        result = bmo(args, workspace, data)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert accepted in result.stderr and "accepted" in result.stderr and "Traceback" not in result.stderr


def test_pretty_logs_show_client_and_route_on_outcome_lines(
    make_server: Callable[..., BmoServer], workspace: Path
) -> None:
    server = make_server()
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={**server.headers, "User-Agent": OWUI_UA},
        json={"messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )
    server.records_for(response.headers["x-request-id"], 2)
    server.stop()
    pretty = bmo(["logs", "--pretty", "--msg", "openai_compat.action"], workspace, server.data_dir)
    line = next(x for x in pretty.stdout.splitlines() if response.headers["x-request-id"][:12] in x)
    assert "route=chat_completions" in line and OWUI_UA[:20] in line


def test_help_texts_name_aliases_and_describe_every_option(tmp_path: Path, workspace: Path) -> None:
    data = tmp_path / "data"
    config_help = bmo(["config", "--help"], workspace, data).stdout
    alias_line = next(line for line in config_help.splitlines() if "show-open-webui" in line)
    assert "alias" in alias_line.lower() and "show-openai-compat" in alias_line
    rebuild_help = bmo(["projections", "rebuild", "--help"], workspace, data).stdout
    capacity_line = next(line for line in rebuild_help.splitlines() if "--ledger-capacity" in line)
    assert "runs" in capacity_line.lower()


def test_show_openai_compat_names_the_configured_addr_and_reads_a_live_server(
    make_server: Callable[..., BmoServer], workspace: Path
) -> None:
    server = make_server()
    data = server.data_dir
    offline = bmo(["config", "show-openai-compat"], workspace, data).stdout
    assert "127.0.0.1:9000 (configured" in offline and "--server" in offline
    live = bmo(
        ["config", "show-openai-compat", "--server", server.base_url],
        workspace,
        data,
        env={"BMO_AUTH_TOKEN": server.token or ""},
    )
    assert live.returncode == 0, live.stderr
    assert f"127.0.0.1:{server.port} (live" in live.stdout and "bearer token" in live.stdout
    as_json = json.loads(
        bmo(
            ["config", "show-openai-compat", "--json", "--server", server.base_url],
            workspace,
            data,
            env={"BMO_AUTH_TOKEN": server.token or ""},
        ).stdout
    )
    assert as_json["bind"]["addr"] == f"127.0.0.1:{server.port}" and as_json["bind"]["source"] == "live"
    refused = bmo(["config", "show-openai-compat", "--server", server.base_url], workspace, data)
    assert refused.returncode == 1 and "401" in refused.stderr
