"""`bmo serve`: validate everything, apply the bind rules, then run granian."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from app.cli.config_show import advertised_models
from app.cli.worker import ENV_ADDR, ENV_CONFIG, ENV_CWD, ENV_PROJECTOR, ENV_PROXIES, ENV_TOKEN
from app.config import ConfigError, Settings, data_dir, load_settings
from app.events.faults import ENV_FAULTS
from app.http.identity import TrustedProxies
from app.net import is_loopback_host, parse_addr, port_in_use, resolve_host

__all__ = ["BindDecision", "decide_bind", "serve"]

LOOPBACK_WARNING = (
    "warning: bmo is listening on a non-loopback address ({addr}). The bearer token is the "
    "only boundary; keep it secret, or put bmo behind a trusted reverse proxy."
)


class BindDecision:
    def __init__(self, host: str, port: int, token: str | None, warnings: list[str]) -> None:
        self.host, self.port, self.token, self.warnings = host, port, token, warnings


def decide_bind(
    settings: Settings,
    *,
    addr: str | None,
    token: str | None,
    allow_no_auth: bool,
    env: dict[str, str],
    resolve: Callable[[str, int], list[str]] = resolve_host,
) -> BindDecision:
    """The bind, the token and warnings; ValueError says how to fix a refusal.

    A host name is resolved (granian binds addresses) and loopback is judged on
    every address it resolves to, so a name is held to the same rule as an IP.
    """
    server = settings.options.http_server
    name, port = parse_addr(addr or server.addr)
    addresses = resolve(name, port)
    host = addresses[0]
    token = token or env.get(ENV_TOKEN) or server.auth_token or None
    allow = allow_no_auth or server.allow_no_auth
    loopback = all(is_loopback_host(a) for a in addresses)
    if not loopback and host != name:
        host = next(a for a in addresses if not is_loopback_host(a))
    if token is None and not allow:
        raise ValueError(
            "refusing to start without authentication: pass --auth-token TOKEN "
            "(or set BMO_AUTH_TOKEN), or pass --allow-no-auth to serve unauthenticated on loopback."
        )
    if token is None and not loopback:
        raise ValueError(
            f"refusing --allow-no-auth on non-loopback address {host}"
            f"{f' ({name} resolves to it)' if host != name else ''}: bind 127.0.0.1 or set --auth-token."
        )
    warnings = [] if loopback else [LOOPBACK_WARNING.format(addr=f"{host}:{port}")]
    return BindDecision(host, port, token, warnings)


def serve(
    *,
    addr: Annotated[
        str | None, Parameter(help="HOST:PORT to listen on (default from config: 127.0.0.1:9000).")
    ] = None,
    auth_token: Annotated[
        str | None, Parameter(help="Bearer token clients must send (or BMO_AUTH_TOKEN).")
    ] = None,
    allow_no_auth: Annotated[
        bool, Parameter(help="Serve without a token (loopback addresses only).")
    ] = False,
    workers: Annotated[int, Parameter(help="granian worker processes.")] = 1,
    config: Annotated[
        Path | None, Parameter(help="An extra config file, on top of the layered ones.")
    ] = None,
) -> int:
    """Start the HTTP server (granian) on the resolved configuration."""
    env = dict(os.environ)
    cwd = Path.cwd()
    try:
        settings = load_settings(cwd=cwd, env=env, extra=config, serving=True)
        bind = decide_bind(settings, addr=addr, token=auth_token, allow_no_auth=allow_no_auth, env=env)
        TrustedProxies.parse(env.get(ENV_PROXIES))  # refuse to start on a bad entry
    except (ConfigError, ValueError) as exc:
        print(f"bmo serve: {exc}", file=sys.stderr)
        return 2
    if workers < 1:
        print("bmo serve: --workers must be at least 1", file=sys.stderr)
        return 2
    busy = port_in_use(bind.host, bind.port)
    if busy is not None:
        print(f"bmo serve: cannot listen on {_addr(bind)}: {_busy(busy)}", file=sys.stderr)
        return 1
    for warning in bind.warnings:
        print(warning, file=sys.stderr)
    if env.get(ENV_FAULTS):
        print(
            f"WARNING: {ENV_FAULTS} is set: event-store appends fail while {env[ENV_FAULTS]} exists "
            "(a test seam; never set it in production)",
            file=sys.stderr,
        )
    _recover(settings, data_dir(env))
    _export(bind, config, cwd)
    projector = _start_projector(settings)
    print(banner(settings, bind, cwd=cwd, data=data_dir(env), workers=workers), file=sys.stderr, flush=True)
    try:
        return _run_granian(bind, workers)
    finally:
        _stop_projector(projector)


def _addr(bind: BindDecision) -> str:
    return f"[{bind.host}]:{bind.port}" if ":" in bind.host else f"{bind.host}:{bind.port}"


def _busy(reason: str) -> str:
    if "in use" in reason.lower():
        return "the address is already in use (another bmo serve or another program listens there)"
    return reason


def banner(settings: Settings, bind: BindDecision, *, cwd: Path, data: Path, workers: int) -> str:
    """What an operator needs to know before the first request: where, who, what, how guarded."""
    compat = settings.options.openai_compat
    workspace = (cwd / Path(settings.options.workspace).expanduser()).resolve()
    auth = "bearer token" if bind.token else "none (--allow-no-auth, loopback only)"
    lines = [
        f"bmo: serving on http://{_addr(bind)}/v1",
        f"  workspace      {workspace}",
        f"  config files   {', '.join(settings.sources) or '(defaults only)'}",
        f"  models         {', '.join(advertised_models(settings)) or '(none)'}",
        f"  default model  {settings.options.model}",
        f"  tool policy    {compat.tool_policy} (ambiguity_action {compat.ambiguity_action})",
        f"  auth           {auth}",
        f"  data           {data}",
        f"  workers        {workers}",
    ]
    return "\n".join(lines)


def _recover(settings: Settings, data: Path) -> None:
    """Before workers start: close the runs a crashed process left open."""
    from app.events.store import open_event_store
    from app.projections.db import read_db_path
    from app.recovery import sweep_interrupted
    from app.telemetry import Records, log_path

    store = open_event_store(data)
    records = Records(log_path(data))
    try:
        swept = sweep_interrupted(
            store, read_db_path(data), records, settings.options.openai_compat.ledger_capacity
        )
    finally:
        records.close()
        store.close()
    if swept:
        print(f"bmo: recovered {len(swept)} interrupted run(s) as error_500", file=sys.stderr)


def _start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    """The one projector, in a process of its own: no GIL shared with request handling."""
    os.environ[ENV_PROJECTOR] = "external"
    capacity = str(settings.options.openai_compat.ledger_capacity)
    return subprocess.Popen(
        [sys.executable, "-m", "app", "projections", "run", "--ledger-capacity", capacity],
        stdin=subprocess.PIPE,  # closing it (or our death) tells the projector to finish
    )


def _stop_projector(projector: subprocess.Popen[bytes]) -> None:
    """After the workers stopped: let the projector apply the last events, then exit."""
    if projector.stdin is not None:
        projector.stdin.close()
    try:
        projector.wait(timeout=30)
    except subprocess.TimeoutExpired:
        projector.kill()


def _export(bind: BindDecision, config: Path | None, cwd: Path) -> None:
    os.environ[ENV_ADDR] = f"[{bind.host}]:{bind.port}" if ":" in bind.host else f"{bind.host}:{bind.port}"
    os.environ[ENV_CWD] = str(cwd)
    if config is not None:
        os.environ[ENV_CONFIG] = str(config.resolve())
    if bind.token:
        os.environ[ENV_TOKEN] = bind.token
    else:
        os.environ.pop(ENV_TOKEN, None)


def _run_granian(bind: BindDecision, workers: int) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    server = Granian(
        "app.cli.worker:asgi",
        address=bind.host,
        port=bind.port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        respawn_failed_workers=True,
        # granian counts idle keep-alive connections against its cap (default 1,024 per
        # worker): leave room for 1,000+ open streams plus idle clients.
        backlog=4096,
        backpressure=4096,
        websockets=False,
    )
    server.serve()
    return 0
