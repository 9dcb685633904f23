"""`bmo tui [--server URL] [--auth-token T] [--config PATH]` (cyclopts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from cyclopts import Parameter

if TYPE_CHECKING:
    from app.tui.server import SelfServer

__all__ = ["tui_command"]


def _fail(message: str) -> int:
    print(f"bmo tui: {message}", file=sys.stderr)
    return 2


def tui_command(
    *,
    server: Annotated[
        str | None,
        Parameter(
            help="A running bmo (e.g. http://127.0.0.1:9000). Default: start one on a free loopback port."
        ),
    ] = None,
    auth_token: Annotated[str | None, Parameter(help="Bearer token of --server (or BMO_AUTH_TOKEN).")] = None,
    config: Annotated[
        Path | None, Parameter(help="An extra config file for the self-started server.")
    ] = None,
) -> int:
    """Chat with the agent and watch the OpenAI-compat posture, runs and permission questions."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _fail("needs an interactive terminal (stdin and stdout must be a TTY)")
    from app.tui.app import new_session_id, run_tui
    from app.tui.client import ApiError, BmoClient

    env = dict(os.environ)
    self_server = None
    if server is None:
        started = _start_server(env, config)
        if isinstance(started, int):
            return started
        self_server = started
        url, token = started.base_url, started.token
    else:
        url, token = server, auth_token or env.get("BMO_AUTH_TOKEN") or None
    client = BmoClient(url, token, session_id=new_session_id())
    try:
        try:
            client.posture()  # reachable, and the token is right
        except ApiError as exc:
            hint = " (pass --auth-token or set BMO_AUTH_TOKEN)" if exc.status == 401 else ""
            return _fail(f"{exc}{hint}")
        return run_tui(client)
    finally:
        client.close()
        if self_server is not None:
            self_server.stop()


def _start_server(env: dict[str, str], config: Path | None) -> SelfServer | int:
    from app.config import ConfigError, data_dir, load_settings
    from app.tui.server import SelfServer, ServerStartError

    try:
        load_settings(cwd=Path.cwd(), env=env, extra=config)  # a config error reads better here
    except ConfigError as exc:
        return _fail(str(exc))
    server = SelfServer(data_dir=data_dir(env), config=config, cwd=Path.cwd())
    print(f"bmo tui: starting a local server on {server.base_url} (log: {server.log_path})", file=sys.stderr)
    try:
        return server.start()
    except ServerStartError as exc:
        return _fail(str(exc))
