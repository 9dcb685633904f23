"""Unit tests for app.config (SPEC section 3)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from app.config import (
    ConfigError,
    McpServer,
    Provider,
    Settings,
    config_files,
    data_dir,
    global_config_dir,
    load_settings,
    redacted,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path, tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(home), "BMO_GLOBAL_CONFIG": str(tmp_path / "global")}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    (path / ".git").mkdir(parents=True)
    (path / "sub" / "deeper").mkdir(parents=True)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def global_file(env: dict[str, str], text: str) -> Path:
    return write(Path(env["BMO_GLOBAL_CONFIG"]) / "bmo.toml", text)


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


# ---------------------------------------------------------------- locations and defaults


def test_dirs_from_env_and_defaults(home: Path) -> None:
    assert global_config_dir({"HOME": str(home)}) == home / ".config" / "bmo"
    assert data_dir({"HOME": str(home)}) == home / ".local" / "share" / "bmo"
    assert global_config_dir({"BMO_GLOBAL_CONFIG": "/etc/x"}) == Path("/etc/x")
    assert data_dir({"BMO_GLOBAL_DATA": "/var/x"}) == Path("/var/x")
    assert not (home / ".local").exists()  # data_dir does not create anything


def test_defaults_with_no_files(repo: Path, env: dict[str, str]) -> None:
    settings = load_settings(cwd=repo, env=env)
    assert settings == Settings()
    assert settings.sources == ()
    assert settings.options.model == "bmo/local"
    assert settings.options.workspace == "."
    assert settings.options.http_server.addr == "127.0.0.1:9000"
    assert settings.options.http_server.auth_token is None
    assert settings.options.http_server.allow_no_auth is False
    compat = settings.options.openai_compat
    assert compat.enabled is True
    assert compat.tool_policy == "chat_only"
    assert compat.ambiguity_action == "ask"
    assert compat.model_override_policy == "reject"
    assert compat.ledger_capacity == 10000
    assert compat.max_queue_depth == 4
    assert compat.permission_timeout_s == 120
    assert compat.session_header_fallbacks == ("X-OpenWebUI-Chat-Id",)
    assert compat.max_steps == 25
    assert compat.task_header == "X-OpenWebUI-Task"
    assert settings.options.telemetry.otel.enabled is False
    assert settings.options.telemetry.otel.protocol == "http/protobuf"
    assert settings.options.store.url == ""
    assert settings.permissions.allowed_tools == ("read_file", "list_dir", "search")
    assert settings.providers == {} and settings.mcp == {}


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.options = None  # type: ignore[misc]


def test_global_default_location_uses_home(repo: Path, home: Path) -> None:
    write(home / ".config" / "bmo" / "bmo.toml", 'options.model = "g/m"\n')
    settings = load_settings(cwd=repo, env={"HOME": str(home)})
    assert settings.options.model == "g/m"


# ---------------------------------------------------------------- precedence


def test_precedence_global_root_subdir_extra(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    g = global_file(
        env, 'options.model = "global/m"\noptions.workspace = "/g"\noptions.http_server.addr = "0.0.0.0:1"\n'
    )
    root = write(repo / "bmo.toml", 'options.model = "root/m"\noptions.workspace = "/root"\n')
    sub = write(repo / "sub" / "bmo.toml", 'options.model = "sub/m"\n')
    extra = write(tmp_path / "extra.toml", '[options]\nmodel = "extra/m"\n')
    cwd = repo / "sub" / "deeper"

    assert config_files(cwd, env, None) == [g, root, sub]
    settings = load_settings(cwd=cwd, env=env, extra=extra)
    assert settings.options.model == "extra/m"
    assert settings.options.workspace == "/root"
    assert settings.options.http_server.addr == "0.0.0.0:1"
    assert settings.sources == tuple(str(p) for p in (g, root, sub, extra))

    assert load_settings(cwd=cwd, env=env).options.model == "sub/m"
    assert load_settings(cwd=repo, env=env).options.model == "root/m"


def test_files_above_repo_root_are_ignored(repo: Path, env: dict[str, str]) -> None:
    write(repo.parent / "bmo.toml", 'options.model = "outside/m"\n')
    assert load_settings(cwd=repo / "sub", env=env).options.model == "bmo/local"


def test_no_git_means_only_cwd(tmp_path: Path, env: dict[str, str]) -> None:
    write(tmp_path / "a" / "bmo.toml", 'options.model = "parent/m"\n')
    cwd = tmp_path / "a" / "b"
    cwd.mkdir()
    assert load_settings(cwd=cwd, env=env).options.model == "bmo/local"
    write(cwd / ".bmo.toml", 'options.model = "here/m"\n')
    assert load_settings(cwd=cwd, env=env).options.model == "here/m"


def test_dot_bmo_toml_is_lower_than_bmo_toml(repo: Path, env: dict[str, str]) -> None:
    hidden = write(repo / ".bmo.toml", 'options.model = "hidden/m"\noptions.workspace = "/h"\n')
    plain = write(repo / "bmo.toml", 'options.model = "plain/m"\n')
    assert config_files(repo, env, None) == [hidden, plain]
    settings = load_settings(cwd=repo, env=env)
    assert settings.options.model == "plain/m"
    assert settings.options.workspace == "/h"


def test_missing_extra_is_an_error(repo: Path, env: dict[str, str]) -> None:
    message = error_of(cwd=repo, env=env, extra=repo / "nope.toml")
    assert "nope.toml" in message and "--config" in message


def test_relative_extra_resolves_against_cwd(repo: Path, env: dict[str, str]) -> None:
    write(repo / "conf" / "x.toml", 'options.model = "rel/m"\n')
    assert load_settings(cwd=repo, env=env, extra=Path("conf/x.toml")).options.model == "rel/m"


def test_config_never_read_from_data_dir(tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "data"
    write(data / "bmo.toml", 'options.model = "data/m"\n')
    env = {**env, "BMO_GLOBAL_DATA": str(data)}
    assert load_settings(cwd=data, env=env).options.model == "bmo/local"


# ---------------------------------------------------------------- merging


def test_lists_concatenate_and_dedupe(repo: Path, env: dict[str, str]) -> None:
    global_file(env, '[permissions]\nallowed_tools = ["read_file", "shell"]\n')
    write(repo / "bmo.toml", '[permissions]\nallowed_tools = ["shell", "web_fetch"]\n')
    settings = load_settings(cwd=repo, env=env)
    assert settings.permissions.allowed_tools == ("read_file", "shell", "web_fetch")


def test_explicit_false_wins_and_tables_merge(repo: Path, env: dict[str, str]) -> None:
    global_file(
        env,
        "[options.openai_compat]\nenabled = true\nmax_queue_depth = 9\n"
        "[options.telemetry.otel]\nenabled = true\n",
    )
    write(
        repo / "bmo.toml",
        '[options.openai_compat]\nenabled = false\n[options.telemetry.otel]\nendpoint = "http://otel:4318"\n',
    )
    settings = load_settings(cwd=repo, env=env)
    assert settings.options.openai_compat.enabled is False
    assert settings.options.openai_compat.max_queue_depth == 9
    assert settings.options.telemetry.otel.enabled is True
    assert settings.options.telemetry.otel.endpoint == "http://otel:4318"


def test_provider_tables_merge_across_files(repo: Path, env: dict[str, str]) -> None:
    global_file(env, '[providers.ollama]\ntype = "openai"\nbase_url = "http://a/v1"\nmodels = ["m1"]\n')
    write(repo / "bmo.toml", '[providers.ollama]\nbase_url = "http://b/v1"\nmodels = ["m2"]\n')
    provider = load_settings(cwd=repo, env=env).providers["ollama"]
    assert provider == Provider(type="openai", base_url="http://b/v1", models=("m1", "m2"))


def test_provider_without_type_after_merge(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[providers.ollama]\nbase_url = "http://b/v1"\n')
    message = error_of(cwd=repo, env=env)
    assert str(path) in message
    assert "providers.ollama.type is required" in message
    assert "accepted: openai, anthropic" in message


def test_mcp_servers(repo: Path, env: dict[str, str]) -> None:
    write(
        repo / "bmo.toml",
        '[mcp.files]\ntype = "stdio"\ncommand = "python"\nargs = ["-m", "srv"]\nenv = { TOKEN = "t" }\n',
    )
    server = load_settings(cwd=repo, env=env).mcp["files"]
    assert server == McpServer(type="stdio", command="python", args=("-m", "srv"), env={"TOKEN": "t"})


def test_mcp_stdio_needs_command(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[mcp.files]\ntype = "stdio"\n')
    assert "mcp.files.command is required" in error_of(cwd=repo, env=env)


# ---------------------------------------------------------------- interpolation


def test_env_interpolation_nested(repo: Path, env: dict[str, str]) -> None:
    write(
        repo / "bmo.toml",
        '[options.http_server]\nauth_token = "${BMO_AUTH_TOKEN}"\n'
        '[providers.hosted]\ntype = "anthropic"\napi_key = "k-${KEY}-${KEY}"\n'
        'models = ["${MODEL}"]\n'
        '[mcp.web]\ntype = "http"\nurl = "http://x"\nheaders = { Authorization = "Bearer ${KEY}" }\n'
        '[options]\nworkspace = "$${HOME}/literal"\n',
    )
    env = {**env, "BMO_AUTH_TOKEN": "tok", "KEY": "abc", "MODEL": "claude"}
    settings = load_settings(cwd=repo, env=env)
    assert settings.options.http_server.auth_token == "tok"
    assert settings.providers["hosted"].api_key == "k-abc-abc"
    assert settings.providers["hosted"].models == ("claude",)
    assert settings.mcp["web"].headers == {"Authorization": "Bearer abc"}
    assert settings.options.workspace == "${HOME}/literal"


def test_missing_env_var_names_var_and_file(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[options.http_server]\nauth_token = "${BMO_NOPE}"\n')
    message = error_of(cwd=repo, env=env)
    assert str(path) in message
    assert "BMO_NOPE" in message
    assert "options.http_server.auth_token" in message


def test_missing_env_var_in_list_item(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[permissions]\nallowed_tools = ["a", "${T}"]\n')
    assert "permissions.allowed_tools[1]" in error_of(cwd=repo, env=env)


# ---------------------------------------------------------------- alias key


def test_ambiguity_policy_alias(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[options.openai_compat]\nambiguity_policy = "research"\n')
    assert load_settings(cwd=repo, env=env).options.openai_compat.ambiguity_action == "research"


def test_alias_overridden_by_higher_file(repo: Path, env: dict[str, str]) -> None:
    global_file(env, '[options.openai_compat]\nambiguity_action = "research"\n')
    write(repo / "bmo.toml", '[options.openai_compat]\nambiguity_policy = "code"\n')
    assert load_settings(cwd=repo, env=env).options.openai_compat.ambiguity_action == "code"


def test_alias_and_canonical_in_one_file(repo: Path, env: dict[str, str]) -> None:
    path = write(
        repo / "bmo.toml", '[options.openai_compat]\nambiguity_policy = "code"\nambiguity_action = "ask"\n'
    )
    message = error_of(cwd=repo, env=env)
    assert str(path) in message
    assert "ambiguity_policy" in message and "ambiguity_action" in message


def test_bad_alias_value_lists_accepted(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[options.openai_compat]\nambiguity_policy = "guess"\n')
    assert "accepted: ask, research, code" in error_of(cwd=repo, env=env)


# ---------------------------------------------------------------- validation errors


def test_unknown_key_names_file_path_and_known_keys(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[options.http_server]\nadress = "x"\n')
    message = error_of(cwd=repo, env=env)
    assert message.startswith(f"config error in {path}: ")
    assert "options.http_server.adress" in message
    assert "addr, auth_token, allow_no_auth" in message


def test_unknown_top_level_key(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", 'sources = ["x"]\n')
    message = error_of(cwd=repo, env=env)
    assert "unknown key sources" in message
    assert "options, providers, mcp, permissions" in message


def test_unknown_key_in_provider(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[providers.ollama]\ntype = "openai"\nbase = "x"\n')
    message = error_of(cwd=repo, env=env)
    assert "providers.ollama.base" in message and "base_url" in message


def test_bad_enum_names_accepted_values(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[options.openai_compat]\ntool_policy = "yolo"\n')
    assert error_of(cwd=repo, env=env) == (
        f'config error in {path}: options.openai_compat.tool_policy = "yolo" is not valid '
        "(accepted: chat_only, auto_approve)"
    )


def test_bad_provider_type(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[providers.x]\ntype = "gemini"\n')
    message = error_of(cwd=repo, env=env)
    assert "providers.x.type" in message and "accepted: openai, anthropic" in message


def test_wrong_type_says_expected_and_got(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[options.openai_compat]\nledger_capacity = "lots"\n')
    message = error_of(cwd=repo, env=env)
    assert str(path) in message
    assert "options.openai_compat.ledger_capacity" in message
    assert "expected int, got str" in message


def test_wrong_type_in_list_item(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[permissions]\nallowed_tools = ["a", 3]\n')
    message = error_of(cwd=repo, env=env)
    assert "permissions.allowed_tools[1]" in message and "expected str, got int" in message


def test_scalar_where_table_expected(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", "options = 3\n")
    assert "options: expected a table, got int" in error_of(cwd=repo, env=env)


def test_bool_is_not_an_int(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", "[options.openai_compat]\nmax_steps = true\n")
    assert "expected int, got bool" in error_of(cwd=repo, env=env)


def test_numeric_bounds(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", "[options.openai_compat]\nledger_capacity = 0\n")
    message = error_of(cwd=repo, env=env)
    assert "options.openai_compat.ledger_capacity" in message and ">= 1" in message


def test_error_in_lower_file_names_that_file(repo: Path, env: dict[str, str]) -> None:
    bad = global_file(env, '[options]\nmodle = "x"\n')
    write(repo / "bmo.toml", 'options.model = "ok/m"\n')
    assert str(bad) in error_of(cwd=repo, env=env)


def test_toml_syntax_error_names_file_and_line(repo: Path, env: dict[str, str]) -> None:
    path = write(repo / "bmo.toml", '[options]\nmodel = "a"\nworkspace = \n')
    message = error_of(cwd=repo, env=env)
    assert str(path) in message
    assert "line 3" in message


@pytest.mark.parametrize("name", ["bmo", "has space", "slash/name", ""])
def test_bad_provider_name(repo: Path, env: dict[str, str], name: str) -> None:
    path = write(repo / "bmo.toml", f'[providers."{name}"]\ntype = "openai"\n')
    message = error_of(cwd=repo, env=env)
    assert str(path) in message and "providers." in message
    if name == "bmo":
        assert "reserved" in message
    else:
        assert "[A-Za-z0-9_.-]" in message


def test_bad_mcp_id(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[mcp."a b"]\ntype = "stdio"\ncommand = "x"\n')
    assert 'mcp."a b"' in error_of(cwd=repo, env=env)


def test_good_provider_names(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[providers."my.prov-1_x"]\ntype = "openai"\n')
    assert "my.prov-1_x" in load_settings(cwd=repo, env=env).providers


# ---------------------------------------------------------------- redaction


def test_redacted_hides_secrets(repo: Path, env: dict[str, str]) -> None:
    write(
        repo / "bmo.toml",
        '[options.http_server]\nauth_token = "s3cret"\n'
        '[providers.a]\ntype = "openai"\napi_key = "sk-1"\n'
        '[providers.b]\ntype = "openai"\n'
        '[mcp.m]\ntype = "sse"\nurl = "http://m"\nenv = { K = "v1" }\n'
        'headers = { Authorization = "Bearer v2" }\n',
    )
    settings = load_settings(cwd=repo, env=env)
    data = redacted(settings)
    assert isinstance(data, dict)
    assert data["options"]["http_server"]["auth_token"] == "***"
    assert data["providers"]["a"]["api_key"] == "***"
    assert data["providers"]["b"]["api_key"] == ""
    assert data["mcp"]["m"]["env"] == {"K": "***"}
    assert data["mcp"]["m"]["headers"] == {"Authorization": "***"}
    text = msgspec.json.encode(data).decode()
    for secret in ("s3cret", "sk-1", "v1", "v2"):
        assert secret not in text
    assert settings.options.http_server.auth_token == "s3cret"  # original untouched


def test_redacted_leaves_unset_token_none() -> None:
    data = redacted(Settings())
    assert data["options"]["http_server"]["auth_token"] is None
    assert data["options"]["model"] == "bmo/local"


def test_wrong_type_in_mcp_env_names_the_key(repo: Path, env: dict[str, str]) -> None:
    write(repo / "bmo.toml", '[mcp.x]\ntype = "stdio"\ncommand = "c"\nenv = { A = 1 }\n')
    assert "mcp.x.env.A = 1: expected str, got int" in error_of(cwd=repo, env=env)
