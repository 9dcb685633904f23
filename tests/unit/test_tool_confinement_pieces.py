"""The pieces behind tool confinement: environment, redaction, the orphan sweep."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from app.agent.tools.environment import tool_environment
from app.agent.tools.process_guard import MARKER_VAR, GroupRecords, reap_orphans, start_time
from app.config import ConfigError, load_settings
from app.redaction import MARKER, Redactor, looks_secret, server_secrets


def test_tool_environment_is_the_base_plus_passthrough() -> None:
    source = {
        "PATH": "/bin",
        "HOME": "/root",
        "LC_ALL": "C",
        "LANG": "C.UTF-8",
        "BMO_AUTH_TOKEN": "t",
        "BMO_AUTH_TOKEN_SHA256": "d",
        "OPENAI_API_KEY": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "GOPATH": "/go",
    }
    assert tool_environment(source) == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "LANG": "C.UTF-8"}
    with_go = tool_environment(source, ["GOPATH"], overrides={"X": "1"})
    assert with_go["GOPATH"] == "/go" and with_go["X"] == "1" and "OPENAI_API_KEY" not in with_go


def test_redactor_replaces_every_copy_longest_first() -> None:
    redact = Redactor(["sk-abcdefgh", "sk-abcdefgh-longer", "short"])
    assert redact("a sk-abcdefgh-longer b sk-abcdefgh c short") == f"a {MARKER} b {MARKER} c short"
    assert Redactor([])("unchanged") == "unchanged"


def test_server_secrets_cover_token_keys_and_secret_looking_env(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "bmo.toml").write_text(
        '[options.http_server]\nauth_token = "config-token-123"\n'
        '[providers.p]\ntype = "openai"\napi_key = "sk-provider-456"\n'
        '[mcp.m]\ntype = "stdio"\ncommand = "x"\n'
        'env = { GITHUB_TOKEN = "ghp-mcp-789", MODE = "plainvalue" }\n'
    )
    env = {"BMO_GLOBAL_CONFIG": str(tmp_path / "none"), "DB_PASSWORD": "hunter2-db", "EDITOR": "vim-editor"}
    settings = load_settings(cwd=tmp_path, env=env)
    found = set(server_secrets(settings, env))
    assert {"config-token-123", "sk-provider-456", "ghp-mcp-789", "hunter2-db"} <= found
    assert "plainvalue" not in found and "vim-editor" not in found
    assert looks_secret("ANTHROPIC_API_KEY") and not looks_secret("PATH")


def test_passthrough_names_are_validated(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "bmo.toml").write_text('[options]\ntool_env_passthrough = ["GOPATH", "not a name"]\n')
    with pytest.raises(ConfigError, match="tool_env_passthrough"):
        load_settings(cwd=tmp_path, env={"BMO_GLOBAL_CONFIG": str(tmp_path / "none")})


def _sleeper(marker: str | None) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ["PATH"], **({MARKER_VAR: marker} if marker else {})}
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


def _write(directory: Path, marker: str, **fields: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    record = {"marker": marker, "owner_pid": 0, "owner_start": None, "leader_pid": None, "leader_start": None}
    (directory / f"{marker}.json").write_text(json.dumps({**record, **fields}))


def test_sweep_kills_marked_processes_of_dead_owners_only(tmp_path: Path) -> None:
    records = tmp_path / "tool-groups"
    orphan, live, stranger = _sleeper("m-orphan"), _sleeper("m-live"), _sleeper(None)
    try:
        _write(records, "m-orphan", owner_pid=orphan.pid, owner_start=-1)  # owner gone (start differs)
        _write(records, "m-live", owner_pid=os.getpid(), owner_start=start_time(os.getpid()))
        # a record whose leader pid now belongs to someone else (another start time): pid reuse
        _write(records, "m-reused", owner_pid=1, owner_start=-1, leader_pid=stranger.pid, leader_start=-5)
        reaped = reap_orphans(records)
        assert [(r.marker, r.pids) for r in reaped] == [("m-orphan", (orphan.pid,))]
        assert orphan.wait(5) == -9
        time.sleep(0.1)
        assert live.poll() is None and stranger.poll() is None  # never signalled
        assert sorted(p.name for p in records.iterdir()) == ["m-live.json"]
    finally:
        for proc in (orphan, live, stranger):
            proc.kill()
            proc.wait()


def test_group_records_are_removed_when_the_group_ends(tmp_path: Path) -> None:
    records = GroupRecords(tmp_path / "tool-groups")
    with records.group("m1", os.getpid()):
        assert (tmp_path / "tool-groups" / "m1.json").exists()
    assert not (tmp_path / "tool-groups" / "m1.json").exists()
