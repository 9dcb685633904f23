"""Layered TOML configuration (docs/configuration.md).

Files, lowest to highest precedence: the global ``bmo.toml``, project files from
the repository root down to the working directory, then ``--config PATH``.
Each file is read, ``${VAR}``-interpolated and validated on its own (so errors
name the file), the raw tables are merged, and the merged result is validated
again and decoded into frozen :class:`Settings`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

__all__ = [
    "ConfigError",
    "HttpServer",
    "McpServer",
    "OpenAICompat",
    "Options",
    "Otel",
    "Permissions",
    "Provider",
    "Settings",
    "Store",
    "Telemetry",
    "config_files",
    "data_dir",
    "global_config_dir",
    "load_settings",
    "redacted",
    "served_models",
]

_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_RESERVED_PROVIDER = "bmo"
_CONFIG_NAME = "bmo.toml"
_PROJECT_NAMES = (".bmo.toml", "bmo.toml")  # lowest first within one directory
_REDACTED = "***"

_NAME_RE = re.compile(_NAME_PATTERN)
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INTERP_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
_ALIASES = (("options", "openai_compat", "ambiguity_policy", "ambiguity_action"),)

_Name = Annotated[str, msgspec.Meta(pattern=_NAME_PATTERN)]


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for every config table."""


class HttpServer(_Config):
    addr: str = "127.0.0.1:9000"
    auth_token: str | None = None
    allow_no_auth: bool = False
    # SIGTERM/SIGINT: runs in flight may finish this long, then end `error_500` (reason `interrupted`)
    shutdown_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # a client that reads nothing for this long is disconnected (run `cancelled`, recorded); 0 = never
    stall_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0


class OpenAICompat(_Config):
    enabled: bool = True
    tool_policy: Literal["chat_only", "auto_approve"] = "chat_only"
    ambiguity_action: Literal["ask", "research", "code"] = "ask"
    model_override_policy: Literal["reject", "allow_ephemeral"] = "reject"
    models: tuple[str, ...] = ()
    ledger_capacity: Annotated[int, msgspec.Meta(ge=1)] = 10000
    max_queue_depth: Annotated[int, msgspec.Meta(ge=0)] = 4
    permission_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    show_tool_activity: bool = True
    session_header_fallbacks: tuple[str, ...] = ("X-OpenWebUI-Chat-Id",)
    max_steps: Annotated[int, msgspec.Meta(ge=1)] = 25
    task_header: str = "X-OpenWebUI-Task"  # the header carrying Open WebUI's {{TASK}}
    router_model: str | None = None  # model id for the model-based ambiguity classifier
    public_url: str = ""  # base URL a user's browser reaches bmo at: review links in question blocks
    review_secret: str | None = None  # HMAC key for review links (default: a file under the data dir)


class Otel(_Config):
    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318"
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"


class Telemetry(_Config):
    otel: Otel = msgspec.field(default_factory=Otel)


class Store(_Config):
    url: str = ""  # empty = SQLite under the data dir
    unavailable_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # durable appends: then 503
    # PostgreSQL: an instance silent this long is gone; other instances close its runs
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0


_EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Options(_Config):
    model: str = "bmo/local"
    workspace: str = "."
    # environment variables tool processes (bash, kubectl, stdio MCP servers) get on top of
    # a small base (PATH, HOME, LANG, LC_*, TMPDIR, TERM, USER, SHELL, ...)
    tool_env_passthrough: tuple[_EnvName, ...] = ()
    http_server: HttpServer = msgspec.field(default_factory=HttpServer)
    openai_compat: OpenAICompat = msgspec.field(default_factory=OpenAICompat)
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry)
    store: Store = msgspec.field(default_factory=Store)


class Provider(_Config):
    type: Literal["openai", "anthropic"]
    base_url: str = ""
    api_key: str = ""
    models: tuple[str, ...] = ()
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 2


class McpServer(_Config):
    type: Literal["stdio", "http", "sse"]
    command: str = ""
    args: tuple[str, ...] = ()
    url: str = ""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    disabled_tools: tuple[str, ...] = ()
    enabled: bool = True


class Permissions(_Config):
    allowed_tools: tuple[str, ...] = ("read_file", "list_dir", "search")


class Settings(_Config):
    options: Options = msgspec.field(default_factory=Options)
    providers: dict[_Name, Provider] = msgspec.field(default_factory=dict)
    mcp: dict[_Name, McpServer] = msgspec.field(default_factory=dict)
    permissions: Permissions = msgspec.field(default_factory=Permissions)
    sources: tuple[str, ...] = ()  # files that were merged, lowest precedence first


class ConfigError(Exception):
    """A configuration problem; ``str(error)`` is the full human message."""


class _Problem(Exception):
    """A validation problem at a key path, before the file name is known."""

    def __init__(self, keys: tuple[str, ...], text: str) -> None:
        super().__init__(text)
        self.keys = keys
        self.text = text


# ---------------------------------------------------------------- locations


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _env_dir(env: Mapping[str, str], var: str, default: tuple[str, ...]) -> Path:
    value = env.get(var)
    if value:
        return Path(value).expanduser()
    return _home(env).joinpath(*default)


def global_config_dir(env: Mapping[str, str]) -> Path:
    """``$BMO_GLOBAL_CONFIG``, else ``~/.config/bmo``."""
    return _env_dir(env, "BMO_GLOBAL_CONFIG", (".config", "bmo"))


def data_dir(env: Mapping[str, str]) -> Path:
    """``$BMO_GLOBAL_DATA``, else ``~/.local/share/bmo`` (not created here)."""
    return _env_dir(env, "BMO_GLOBAL_DATA", (".local", "share", "bmo"))


def _repo_root(cwd: Path) -> Path:
    for directory in (cwd, *cwd.parents):
        if (directory / ".git").exists():
            return directory
    return cwd


def _project_dirs(cwd: Path) -> list[Path]:
    root = _repo_root(cwd)
    dirs = [root]
    for part in cwd.relative_to(root).parts:
        dirs.append(dirs[-1] / part)
    return dirs


def _in_dir(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _extra_file(cwd: Path, env: Mapping[str, str], extra: Path) -> Path:
    path = cwd / extra.expanduser()
    if not path.is_file():
        raise ConfigError(f"config error: --config file {path} does not exist or is not a file")
    if _in_dir(path, data_dir(env)):
        raise ConfigError(f"config error: refusing to read config from the data dir: {path}")
    return path


def config_files(cwd: Path, env: Mapping[str, str], extra: Path | None) -> list[Path]:
    """Existing config files in precedence order, lowest first."""
    cwd = cwd.absolute()
    candidates = [global_config_dir(env) / _CONFIG_NAME]
    candidates += [d / name for d in _project_dirs(cwd) for name in _PROJECT_NAMES]
    data = data_dir(env)
    found = [p for p in candidates if p.is_file() and not _in_dir(p, data)]
    if extra is not None:
        found.append(_extra_file(cwd, env, extra))
    return _unique_paths(found)


def _unique_paths(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# ---------------------------------------------------------------- formatting


def _dotted(keys: Sequence[str]) -> str:
    """``options.http_server.addr``; odd keys are quoted, ``[i]`` items are appended."""
    text = ""
    for key in keys:
        if key.startswith("[") and text:
            text += key
        else:
            text += ("." if text else "") + (key if _BARE_KEY_RE.match(key) else json.dumps(key))
    return text or "(top level)"


def _show(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _where(path: Path | str) -> str:
    return f"config error in {path}: "


# ---------------------------------------------------------------- reading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_where(path)}invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{_where(path)}file is not valid UTF-8: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{_where(path)}cannot read file: {exc.strerror}") from None


def _substitute(text: str, env: Mapping[str, str], keys: tuple[str, ...]) -> str:
    def replace(match: re.Match[str]) -> str:
        token, name = match.group(0), match.group(1)
        if token == "$${":
            return "${"
        if name is None:
            raise _Problem(
                keys,
                f"{_dotted(keys)}: malformed ${{...}} reference in "
                f"{_show(text)} (write $${{ for a literal ${{)",
            )
        if name not in env:
            raise _Problem(keys, f"environment variable {name} is not set (referenced by {_dotted(keys)})")
        return env[name]

    return _INTERP_RE.sub(replace, text)


def _interpolate(value: Any, env: Mapping[str, str], keys: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _substitute(value, env, keys)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, (*keys, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, (*keys, f"[{i}]")) for i, v in enumerate(value)]
    return value


def _table_at(raw: dict[str, Any], keys: Sequence[str]) -> dict[str, Any] | None:
    node: Any = raw
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _apply_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    """Rename alias keys in place (``raw`` is a fresh copy made by ``_interpolate``)."""
    for *table, alias, canonical in _ALIASES:
        node = _table_at(raw, table)
        if node is None or alias not in node:
            continue
        if canonical in node:
            both = (_dotted((*table, alias)), _dotted((*table, canonical)))
            raise _Problem(
                (*table, alias),
                f"both {both[0]} and {both[1]} are set; {alias} is an alias of {canonical}, use only one",
            )
        node[canonical] = node.pop(alias)
    return raw


def _load_layer(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    raw = _read_toml(path)
    try:
        raw = _apply_aliases(_interpolate(raw, env, ()))
        _check_struct(Settings, raw, (), complete=False)
    except _Problem as problem:
        raise ConfigError(_where(path) + problem.text) from None
    return raw


# ---------------------------------------------------------------- validation


def _strip_annotated(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _table_of_structs(tp: Any) -> type[msgspec.Struct] | None:
    if get_origin(tp) is not dict:
        return None
    value_type = _strip_annotated(get_args(tp)[1])
    return value_type if _is_struct(value_type) else None


def _config_fields(cls: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    if cls is Settings:
        del fields["sources"]  # computed by load_settings, never read from a file
    return fields


def _check_struct(cls: type[msgspec.Struct], raw: Any, keys: tuple[str, ...], *, complete: bool) -> None:
    if not isinstance(raw, dict):
        raise _Problem(keys, f"{_dotted(keys)}: expected a table, got {_kind(raw)}")
    fields = _config_fields(cls)
    for key, value in raw.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(fields)
            where = f"[{_dotted(keys)}]" if keys else "the top level"
            raise _Problem(
                (*keys, key), f"unknown key {_dotted((*keys, key))} (known keys in {where}: {known})"
            )
        _check_value(field.type, value, (*keys, key), complete=complete)
    if complete:
        _check_required(fields, raw, keys)


def _check_required(
    fields: Mapping[str, msgspec.structs.FieldInfo], raw: Mapping[str, Any], keys: tuple[str, ...]
) -> None:
    for name, field in fields.items():
        if field.required and name not in raw:
            accepted = _accepted(field.type)
            hint = f" (accepted: {accepted})" if accepted else ""
            raise _Problem((*keys, name), f"{_dotted((*keys, name))} is required{hint}")


def _check_value(tp: Any, value: Any, keys: tuple[str, ...], *, complete: bool) -> None:
    base = _strip_annotated(tp)
    item_struct = _table_of_structs(base)
    if _is_struct(base):
        _check_struct(base, value, keys, complete=complete)
    elif item_struct is not None:
        _check_named_tables(item_struct, value, keys, complete=complete)
    elif get_origin(base) is Literal:
        _check_literal(base, value, keys)
    elif get_origin(base) is dict and isinstance(value, dict):
        for key, item in value.items():  # per-key paths, e.g. mcp.x.env.TOKEN
            _check_leaf(get_args(base)[1], item, (*keys, key))
    else:
        _check_leaf(tp, value, keys)


def _check_named_tables(
    item: type[msgspec.Struct], raw: Any, keys: tuple[str, ...], *, complete: bool
) -> None:
    if not isinstance(raw, dict):
        raise _Problem(keys, f"{_dotted(keys)}: expected a table, got {_kind(raw)}")
    for name, value in raw.items():
        _check_name(name, keys)
        _check_struct(item, value, (*keys, name), complete=complete)


def _check_name(name: str, keys: tuple[str, ...]) -> None:
    what = "provider name" if keys == ("providers",) else "id"
    if not _NAME_RE.match(name):
        raise _Problem(
            (*keys, name),
            f"{_dotted((*keys, name))}: {json.dumps(name)} is not a "
            f"valid {what} (must match {_NAME_PATTERN})",
        )
    if keys == ("providers",) and name == _RESERVED_PROVIDER:
        raise _Problem(
            (*keys, name),
            f"{_dotted((*keys, name))}: the provider name "
            f"{json.dumps(name)} is reserved for the built-in "
            f"local model (bmo/local)",
        )


def _accepted(tp: Any) -> str:
    base = _strip_annotated(tp)
    if get_origin(base) is not Literal:
        return ""
    return ", ".join(str(v) for v in get_args(base))


def _check_literal(tp: Any, value: Any, keys: tuple[str, ...]) -> None:
    if value not in get_args(tp) or not isinstance(value, str):
        raise _Problem(keys, f"{_dotted(keys)} = {_show(value)} is not valid (accepted: {_accepted(tp)})")


def _check_leaf(tp: Any, value: Any, keys: tuple[str, ...]) -> None:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        path = _dotted(keys) + at.rstrip("`")
        detail = message.replace("`", "").replace("object", "table")
        detail = detail[:1].lower() + detail[1:]
        raise _Problem(keys, f"{path} = {_show(value)}: {detail}") from None


# ---------------------------------------------------------------- merging


def _dedupe(items: list[Any]) -> list[Any]:
    unique: list[Any] = []
    for item in items:
        if item not in unique:
            unique.append(item)
    return unique


def _merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars replace (``false`` included), tables merge per key, lists concatenate."""
    merged = dict(low)
    for key, value in high.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = _dedupe(old + value)
        else:
            merged[key] = value
    return merged


def _has_path(raw: Mapping[str, Any], keys: Sequence[str]) -> bool:
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _blame(layers: Sequence[tuple[Path, dict[str, Any]]], keys: tuple[str, ...]) -> str:
    """The files that define the table holding ``keys`` (all files if none does)."""
    table = keys[:-1]
    files = [str(p) for p, raw in layers if table and _has_path(raw, table)]
    files = files or [str(p) for p, _ in layers]
    if not files:
        return "the built-in defaults"
    return files[0] if len(files) == 1 else "merged config (" + ", ".join(files) + ")"


def _check_semantics(settings: Settings) -> None:
    public_url = settings.options.openai_compat.public_url
    if public_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", public_url):
        keys = ("options", "openai_compat", "public_url")
        raise _Problem(
            keys, f"{_dotted(keys)} must be an http(s) URL without query, e.g. http://localhost:9000"
        )
    secret = settings.options.openai_compat.review_secret
    if secret is not None and len(secret) < 16:
        keys = ("options", "openai_compat", "review_secret")
        raise _Problem(keys, f"{_dotted(keys)} must be at least 16 characters")
    for name, server in settings.mcp.items():
        if not server.enabled:
            continue
        if server.type == "stdio" and not server.command:
            raise _Problem(
                ("mcp", name, "command"),
                f'{_dotted(("mcp", name, "command"))} is required for type = "stdio"',
            )
        if server.type in ("http", "sse") and not server.url:
            raise _Problem(
                ("mcp", name, "url"),
                f"{_dotted(('mcp', name, 'url'))} is required for type = {json.dumps(server.type)}",
            )


def _build(layers: Sequence[tuple[Path, dict[str, Any]]]) -> Settings:
    merged: dict[str, Any] = {}
    for _, raw in layers:
        merged = _merge(merged, raw)
    try:
        _check_struct(Settings, merged, (), complete=True)
        settings = msgspec.convert(merged, Settings)
        _check_semantics(settings)
    except _Problem as problem:
        raise ConfigError(_where(_blame(layers, problem.keys)) + problem.text) from None
    except msgspec.ValidationError as exc:  # defensive: the checks above should catch all
        raise ConfigError(_where(_blame(layers, ())) + str(exc)) from None
    return settings


# ---------------------------------------------------------------- public API


def load_settings(
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra: Path | None = None,
    serving: bool = False,
) -> Settings:
    """Find, read, interpolate, validate and merge every config file.

    ``serving`` adds the checks only a server needs (the model ids it must
    route to are served by some provider), so `bmo serve` refuses to start on
    a configuration whose first request would fail.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    files = config_files(cwd, env, extra)
    layers = [(path, _load_layer(path, env)) for path in files]
    settings = _build(layers)
    if serving:
        try:
            _check_served(settings)
        except _Problem as problem:
            raise ConfigError(_where(_blame_value(layers, problem.keys)) + problem.text) from None
    return msgspec.structs.replace(settings, sources=tuple(str(p) for p in files))


def served_models(settings: Settings) -> list[str]:
    """Every model id some provider serves: ``bmo/local`` plus ``<provider>/<model>``."""
    return ["bmo/local"] + [f"{name}/{m}" for name, p in settings.providers.items() for m in p.models]


def _check_served(settings: Settings) -> None:
    """The model ids bmo routes to on its own must be served by a provider."""
    served = served_models(settings)
    compat = settings.options.openai_compat
    wanted = [(("options", "model"), settings.options.model)]
    if compat.router_model:
        wanted.append((("options", "openai_compat", "router_model"), compat.router_model))
    for keys, model in wanted:
        if model not in served:
            raise _Problem(
                keys,
                f"{_dotted(keys)} = {_show(model)} is not served by any provider "
                f"(accepted: {', '.join(served)}; add the model to a [providers.<name>] models list)",
            )


def _blame_value(layers: Sequence[tuple[Path, dict[str, Any]]], keys: tuple[str, ...]) -> str:
    """The last file that sets ``keys`` (it wins the merge), else the usual blame."""
    setting = [str(p) for p, raw in layers if _has_path(raw, keys)]
    return setting[-1] if setting else _blame(layers, keys)


def redacted(settings: Settings) -> dict[str, Any]:
    """Plain builtins of ``settings`` with every set secret replaced by ``"***"``."""
    data: dict[str, Any] = msgspec.to_builtins(settings)
    server = data["options"]["http_server"]
    if server["auth_token"] is not None:
        server["auth_token"] = _REDACTED
    for provider in data["providers"].values():
        if provider["api_key"]:
            provider["api_key"] = _REDACTED
    for server_cfg in data["mcp"].values():
        for table in ("env", "headers"):
            server_cfg[table] = {key: _REDACTED for key in server_cfg[table]}
    return data
