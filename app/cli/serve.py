"""`bmo serve`: validate everything, apply the bind rules, then run granian."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from uuid import uuid4

from cyclopts import Parameter

from app.cli.worker import ENV_ADDR, ENV_CONFIG, ENV_CWD, ENV_PROJECTOR, ENV_PROXIES, ENV_TOKEN
from app.config import ConfigError, Settings, data_dir, load_settings
from app.events.faults import ENV_FAULTS
from app.events.location import ENV_INSTANCE, ENV_STORE_URL, store_url
from app.http.identity import TrustedProxies
from app.net import is_loopback_host, parse_addr

__all__ = ["BindDecision", "decide_bind", "serve"]

LOOPBACK_WARNING = (
    "warning: bmo is listening on a non-loopback address ({addr}). The bearer token is the "
    "only boundary; keep it secret, or put bmo behind a trusted reverse proxy."
)


class BindDecision:
    def __init__(self, host: str, port: int, token: str | None, warnings: list[str]) -> None:
        self.host, self.port, self.token, self.warnings = host, port, token, warnings


def decide_bind(
    settings: Settings, *, addr: str | None, token: str | None, allow_no_auth: bool, env: dict[str, str]
) -> BindDecision:
    """Pure: the bind, the token and warnings; ValueError says how to fix a refusal."""
    server = settings.options.http_server
    host, port = parse_addr(addr or server.addr)
    token = token or env.get(ENV_TOKEN) or server.auth_token or None
    allow = allow_no_auth or server.allow_no_auth
    loopback = is_loopback_host(host)
    if token is None and not allow:
        raise ValueError(
            "refusing to start without authentication: pass --auth-token TOKEN "
            "(or set BMO_AUTH_TOKEN), or pass --allow-no-auth to serve unauthenticated on loopback."
        )
    if token is None and not loopback:
        raise ValueError(
            f"refusing --allow-no-auth on non-loopback address {host}: bind 127.0.0.1 or set --auth-token."
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
        settings = load_settings(cwd=cwd, env=env, extra=config)
        bind = decide_bind(settings, addr=addr, token=auth_token, allow_no_auth=allow_no_auth, env=env)
        TrustedProxies.parse(env.get(ENV_PROXIES))  # refuse to start on a bad entry
        url = store_url(settings, env)
    except (ConfigError, ValueError) as exc:
        print(f"bmo serve: {exc}", file=sys.stderr)
        return 2
    if workers < 1:
        print("bmo serve: --workers must be at least 1", file=sys.stderr)
        return 2
    for warning in bind.warnings:
        print(warning, file=sys.stderr)
    if env.get(ENV_FAULTS):
        print(
            f"WARNING: {ENV_FAULTS} is set: event-store appends fail while {env[ENV_FAULTS]} exists "
            "(a test seam; never set it in production)",
            file=sys.stderr,
        )
    try:
        _recover(settings, data_dir(env), url)
    except Exception as exc:  # an unreachable or refusing PostgreSQL server: say so, no traceback
        if not url:
            raise
        print(f"bmo serve: cannot open the event store at {_store_label(url)}: {exc}", file=sys.stderr)
        return 2
    if url:
        print(f"bmo: event store {_store_label(url)} (shared with every instance on it)", file=sys.stderr)
    _export(bind, config, cwd)
    os.environ[ENV_STORE_URL] = url  # workers and the projector open the same store
    os.environ[ENV_INSTANCE] = uuid4().hex  # this instance, for all its workers: one lease
    projector = _start_projector(settings)
    print(
        f"bmo: serving on http://{bind.host}:{bind.port}/v1 "
        f"(auth {'on' if bind.token else 'off'}, data {data_dir(env)}, workers {workers})",
        file=sys.stderr,
        flush=True,
    )
    try:
        return _run_granian(bind, workers)
    finally:
        _stop_projector(projector)


def _store_label(url: str) -> str:
    from app.events.postgres_store import redact_url

    return redact_url(url)


def _recover(settings: Settings, data: Path, url: str = "") -> None:
    """Before workers start: close the runs a crashed process left open."""
    from app.events.store import open_event_store
    from app.projections.db import read_db_path
    from app.recovery import sweep_interrupted
    from app.telemetry import Records, log_path

    store = open_event_store(data, url=url)
    if url:  # a shared store: other instances may be serving; runs of the gone ones close by lease
        store.close()
        return
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
