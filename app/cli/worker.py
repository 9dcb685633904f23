"""The granian factory target: each worker builds its app from the environment.

`bmo serve` resolves and validates everything first, then hands the result
to workers through these variables (workers inherit the parent environment).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

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
    "asgi",
    "with_shutdown_timeout",
]

ENV_CONFIG = "BMO_SERVE_CONFIG"
ENV_ADDR = "BMO_SERVE_ADDR"
ENV_CWD = "BMO_SERVE_CWD"
ENV_TOKEN = "BMO_AUTH_TOKEN"
ENV_PROXIES = "BMO_REQUESTER_TRUSTED_PROXIES"
ENV_PROJECTOR = "BMO_PROJECTOR"  # "external": `bmo serve` runs the projector process
ENV_SHUTDOWN = "BMO_SERVE_SHUTDOWN_TIMEOUT_S"  # `--shutdown-timeout`, over the config's value


def asgi() -> BmoAsgi:
    env = os.environ
    extra = env.get(ENV_CONFIG)
    cwd = Path(env.get(ENV_CWD) or os.getcwd())
    settings = load_settings(cwd=cwd, env=env, extra=Path(extra) if extra else None)
    if env.get(ENV_SHUTDOWN):
        settings = with_shutdown_timeout(settings, float(env[ENV_SHUTDOWN]))
    host, port = parse_addr(env.get(ENV_ADDR) or settings.options.http_server.addr)
    token = env.get(ENV_TOKEN) or settings.options.http_server.auth_token or None
    from importlib.metadata import version

    return build_asgi(
        settings,
        data_dir=data_dir(env),
        bind=Bind(host=host, port=port, token=token),
        version=version("bmo"),
        proxies=TrustedProxies.parse(env.get(ENV_PROXIES)),
        env=env,
    )


def with_shutdown_timeout(settings: Settings, seconds: float) -> Settings:
    server = msgspec.structs.replace(settings.options.http_server, shutdown_timeout_s=seconds)
    options = msgspec.structs.replace(settings.options, http_server=server)
    return msgspec.structs.replace(settings, options=options)
