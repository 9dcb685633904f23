"""`bmo serve`: validate everything, apply the bind rules, then run granian."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from uuid import uuid4

from cyclopts import Parameter

from app.cli.config_show import advertised_models
from app.cli.worker import (
    ENV_ADDR,
    ENV_CONFIG,
    ENV_CWD,
    ENV_PROJECTOR,
    ENV_PROXIES,
    ENV_SHUTDOWN,
    ENV_TOKEN,
    ENV_TOKEN_DIGEST,
    settings_env,
    with_shutdown_timeout,
)
from app.config import ConfigError, Settings, data_dir, load_settings
from app.events.faults import ENV_FAULTS
from app.events.location import ENV_INSTANCE, ENV_STORE_URL, store_url
from app.http.identity import TrustedProxies
from app.net import is_loopback_host, parse_addr, port_in_use, resolve_host

__all__ = ["BindDecision", "decide_bind", "serve"]

ENV_PROJECTOR_POLL = "BMO_PROJECTOR_POLL_MS"  # the projector's fallback poll (default 1,000 ms)
KILL_GRACE_S = 15  # past the drain deadline: time to end runs and flush events, records and spans

LOOPBACK_WARNING = (
    "warning: bmo is listening on a non-loopback address ({addr}). The bearer token is the "
    "only boundary; keep it secret, or put bmo behind a trusted reverse proxy."
)


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class BindDecision:
    def __init__(
        self, host: str, port: int, token: str | None, warnings: list[str], digest: str | None = None
    ) -> None:
        self.host, self.port, self.token, self.warnings = host, port, token, warnings
        # SHA-256 (hex) of the token: all a serving process keeps
        self.digest = digest or (hashlib.sha256(token.encode()).hexdigest() if token else None)

    @property
    def auth(self) -> bool:
        return self.digest is not None


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
    token = token or env.get(ENV_TOKEN) or None
    digest = None if token else env.get(ENV_TOKEN_DIGEST) or None
    if digest is not None and not _HEX_DIGEST.fullmatch(digest):
        raise ValueError(f"{ENV_TOKEN_DIGEST} must be 64 lowercase hex digits (a SHA-256 of the token)")
    if token is None and digest is None:
        token = server.auth_token or None
    allow = allow_no_auth or server.allow_no_auth
    loopback = all(is_loopback_host(a) for a in addresses)
    if not loopback and host != name:
        host = next(a for a in addresses if not is_loopback_host(a))
    if token is None and digest is None and not allow:
        raise ValueError(
            "refusing to start without authentication: pass --auth-token TOKEN "
            "(or set BMO_AUTH_TOKEN), or pass --allow-no-auth to serve unauthenticated on loopback."
        )
    if token is None and digest is None and not loopback:
        raise ValueError(
            f"refusing --allow-no-auth on non-loopback address {host}"
            f"{f' ({name} resolves to it)' if host != name else ''}: bind 127.0.0.1 or set --auth-token."
        )
    warnings = [] if loopback else [LOOPBACK_WARNING.format(addr=f"{host}:{port}")]
    return BindDecision(host, port, token, warnings, digest)


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
    shutdown_timeout: Annotated[
        float | None,
        Parameter(
            help="Seconds runs in flight may finish after SIGTERM/SIGINT before they are ended "
            "(default from config: 30). A second signal ends them at once."
        ),
    ] = None,
) -> int:
    """Start the HTTP server (granian) on the resolved configuration."""
    env = dict(os.environ)
    cwd = Path.cwd()
    try:
        settings = load_settings(cwd=cwd, env=settings_env(env), extra=config, serving=True)
        bind = decide_bind(settings, addr=addr, token=auth_token, allow_no_auth=allow_no_auth, env=env)
        TrustedProxies.parse(env.get(ENV_PROXIES))  # refuse to start on a bad entry
        url = store_url(settings, env)
    except (ConfigError, ValueError) as exc:
        print(f"bmo serve: {exc}", file=sys.stderr)
        return 2
    if workers < 1:
        print("bmo serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if shutdown_timeout is not None:
        if shutdown_timeout < 0:
            print("bmo serve: --shutdown-timeout must be 0 or more seconds", file=sys.stderr)
            return 2
        settings = with_shutdown_timeout(settings, shutdown_timeout)
        os.environ[ENV_SHUTDOWN] = repr(shutdown_timeout)
    if auth_token is not None or env.get(ENV_TOKEN):
        _reexec_without_token(
            bind,
            addr=addr,
            workers=workers,
            config=config,
            allow_no_auth=allow_no_auth,
            shutdown_timeout=shutdown_timeout,
        )
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
    print(banner(settings, bind, cwd=cwd, data=data_dir(env), workers=workers), file=sys.stderr, flush=True)
    try:
        return _run_granian(bind, workers, settings.options.http_server.shutdown_timeout_s)
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
    auth = "bearer token" if bind.auth else "none (--allow-no-auth, loopback only)"
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
        f"  shutdown       drains runs for {settings.options.http_server.shutdown_timeout_s:g} s on SIGTERM",
    ]
    return "\n".join(lines)


def _store_label(url: str) -> str:
    from app.events.postgres_store import redact_url

    return redact_url(url)


def _recover(settings: Settings, data: Path, url: str = "") -> None:
    """Before workers start: kill the tool processes and close the runs a crashed process left."""
    from app.agent.tools.process_guard import reap_orphans, tool_groups_dir
    from app.events.select import open_event_store
    from app.projections.db import read_db_path
    from app.recovery import sweep_interrupted
    from app.telemetry import Records, log_path

    records = Records(log_path(data))
    swept: list[str] = []
    try:
        for group in reap_orphans(tool_groups_dir(data)):  # this host's tool processes, whatever the store
            records.emit(
                "warning",
                "tools.orphans_reaped",
                group=group.marker,
                pids=list(group.pids),
                commands=list(group.commands),
            )
            print(
                f"bmo: killed {len(group.pids)} tool process(es) left by a server that died: "
                + "; ".join(f"{pid} {cmd}" for pid, cmd in zip(group.pids, group.commands, strict=True)),
                file=sys.stderr,
            )
        store = open_event_store(data, url=url)
        try:
            if not url:  # a shared store: other instances may be serving; runs of gone ones close by lease
                swept = sweep_interrupted(
                    store, read_db_path(data), records, settings.options.openai_compat.ledger_capacity
                )
        finally:
            store.close()
    finally:
        records.close()
    if swept:
        print(f"bmo: recovered {len(swept)} interrupted run(s) as error_500", file=sys.stderr)


def _start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    """The one projector, in a process of its own: no GIL shared with request handling."""
    os.environ[ENV_PROJECTOR] = "external"
    capacity = str(settings.options.openai_compat.ledger_capacity)
    argv = [sys.executable, "-m", "app", "projections", "run", "--ledger-capacity", capacity]
    if os.environ.get(ENV_PROJECTOR_POLL):
        argv += ["--poll-ms", os.environ[ENV_PROJECTOR_POLL]]
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,  # closing it (or our death) tells the projector to finish
        start_new_session=True,  # a terminal's Ctrl-C must not stop it before the workers' last events
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
    os.environ.pop(ENV_TOKEN, None)
    if bind.digest:
        os.environ[ENV_TOKEN_DIGEST] = bind.digest
    else:
        os.environ.pop(ENV_TOKEN_DIGEST, None)


def _reexec_without_token(
    bind: BindDecision,
    *,
    addr: str | None,
    workers: int,
    config: Path | None,
    allow_no_auth: bool,
    shutdown_timeout: float | None,
) -> None:
    """Become `bmo serve` again with the token's digest instead of the token.

    A token given as `--auth-token` or `BMO_AUTH_TOKEN` stays readable in this process's
    /proc/<pid>/cmdline and /proc/<pid>/environ (and in every forked worker's) for as long
    as it runs, where any tool process could print it. exec replaces both; the pid stays.
    """
    argv = [sys.executable, "-m", "app", "serve", "--workers", str(workers)]
    if addr is not None:
        argv += ["--addr", addr]
    if config is not None:
        argv += ["--config", str(config)]
    if allow_no_auth:
        argv.append("--allow-no-auth")
    if shutdown_timeout is not None:
        argv += ["--shutdown-timeout", repr(shutdown_timeout)]
    env = {k: v for k, v in os.environ.items() if k != ENV_TOKEN}
    assert bind.digest is not None
    env[ENV_TOKEN_DIGEST] = bind.digest
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def _run_granian(bind: BindDecision, workers: int, shutdown_timeout_s: float) -> int:
    from granian.constants import Interfaces

    server = _granian_class()(
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
        # Workers drain for shutdown_timeout_s, then end their runs and flush; kill only if that hangs.
        workers_kill_timeout=math.ceil(shutdown_timeout_s) + KILL_GRACE_S,
    )
    server.serve()
    return 0


def _granian_class() -> type:
    """granian's server, passing a second SIGTERM/SIGINT on to the workers (they end their runs at once).

    granian's main process answers the first signal by sending SIGTERM to each worker and waiting; a
    second one would otherwise only set a flag it already set.
    """
    from granian import Granian

    class DrainingGranian(Granian):  # type: ignore[misc, valid-type]
        def signal_handler_interrupt(self, *args: object, **kwargs: object) -> None:
            if self.interrupt_signal:
                for worker in list(self.wrks):
                    with contextlib.suppress(OSError, TypeError):  # gone already, or never started
                        os.kill(worker.inner.pid, signal.SIGTERM)
            super().signal_handler_interrupt(*args, **kwargs)

    return DrainingGranian
