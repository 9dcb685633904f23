"""The granian factory target: each worker builds its app from the environment.

`bmo serve` resolves and validates everything first, then hands the result
to workers through these variables (workers inherit the parent environment).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from app.agent.tools.process_guard import die_with_parent_now, start_watchdog, tool_groups_dir
from app.bootstrap import Bind, build_asgi
from app.config import Settings, data_dir, load_settings
from app.http.asgi import BmoAsgi
from app.http.identity import TrustedProxies
from app.net import parse_addr

__all__ = [
    "ENV_ADDR",
    "ENV_CONFIG",
    "ENV_CWD",
    "ENV_PROJECTOR",
    "ENV_PROXIES",
    "ENV_SHUTDOWN",
    "ENV_TOKEN",
    "ENV_TOKEN_DIGEST",
    "asgi",
    "settings_env",
    "with_shutdown_timeout",
]

ENV_CONFIG = "BMO_SERVE_CONFIG"
ENV_ADDR = "BMO_SERVE_ADDR"
ENV_CWD = "BMO_SERVE_CWD"
ENV_TOKEN = "BMO_AUTH_TOKEN"
# What workers get instead of the token: its SHA-256 (hex). The plaintext never enters
# a serving process's environment, so no tool can print it from there.
ENV_TOKEN_DIGEST = "BMO_AUTH_TOKEN_SHA256"
ENV_PROXIES = "BMO_REQUESTER_TRUSTED_PROXIES"
ENV_PROJECTOR = "BMO_PROJECTOR"  # "external": `bmo serve` runs the projector process
ENV_SHUTDOWN = "BMO_SERVE_SHUTDOWN_TIMEOUT_S"  # `--shutdown-timeout`, over the config's value


def settings_env(env: Mapping[str, str]) -> Mapping[str, str]:
    """The environment config files are interpolated with.

    Once `bmo serve` has handed the token over as its digest, BMO_AUTH_TOKEN is gone;
    a config that says `auth_token = "${BMO_AUTH_TOKEN}"` must still load, and the
    digest decides (an empty `auth_token` counts as none).
    """
    if ENV_TOKEN not in env and env.get(ENV_TOKEN_DIGEST):
        return {**env, ENV_TOKEN: ""}
    return env


def asgi() -> BmoAsgi:
    die_with_parent_now()  # a worker (and so its tools) never outlives `bmo serve`
    env = os.environ
    start_watchdog(tool_groups_dir(data_dir(env)))  # and its tools' own children neither
    extra = env.get(ENV_CONFIG)
    cwd = Path(env.get(ENV_CWD) or os.getcwd())
    settings = load_settings(cwd=cwd, env=settings_env(env), extra=Path(extra) if extra else None)
    if env.get(ENV_SHUTDOWN):
        settings = with_shutdown_timeout(settings, float(env[ENV_SHUTDOWN]))
    host, port = parse_addr(env.get(ENV_ADDR) or settings.options.http_server.addr)
    digest = env.get(ENV_TOKEN_DIGEST) or None
    if digest is None and settings.options.http_server.auth_token:
        digest = hashlib.sha256(settings.options.http_server.auth_token.encode()).hexdigest()
    from importlib.metadata import version

    return build_asgi(
        settings,
        data_dir=data_dir(env),
        bind=Bind(host=host, port=port, token_digest=digest),
        version=version("bmo"),
        proxies=TrustedProxies.parse(env.get(ENV_PROXIES)),
        env=env,
    )


def with_shutdown_timeout(settings: Settings, seconds: float) -> Settings:
    server = msgspec.structs.replace(settings.options.http_server, shutdown_timeout_s=seconds)
    options = msgspec.structs.replace(settings.options, http_server=server)
    return msgspec.structs.replace(settings, options=options)
