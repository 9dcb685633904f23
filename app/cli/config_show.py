"""`bmo config show-openai-compat` (alias show-open-webui) and `show-run-ledger`.

Config-only: no server needed, and secrets are never printed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from app.cli.ledger import open_ledger
from app.cli.projections import describe_store
from app.config import ConfigError, Settings, data_dir, load_settings, served_models
from app.net import is_loopback_host, parse_addr
from app.projections import counts, runs

__all__ = ["compat_report", "format_compat", "live_report", "show_openai_compat", "show_run_ledger"]

SERVE_TIME = "(check at serve-time)"
POSTURE_POINTER = (
    "live posture: GET /v1/openai-compat/posture, TUI /openai-compat (alias /openwebui); "
    "ledger: GET /v1/openai-compat/runs, bmo runs list"
)
LOOPBACK_WARNING = (
    "warning: the configured bind {addr} is not loopback: the bearer token is the only boundary. "
    "Keep bmo on loopback or behind a trusted reverse proxy; the Open WebUI API key field is not "
    "a security boundary by itself."
)


def advertised_models(settings: Settings) -> list[str]:
    """The ids GET /v1/models returns (same rule as the server's catalog)."""
    known = served_models(settings)
    wanted = settings.options.openai_compat.models
    return [m for m in wanted if m in known] if wanted else known


def compat_report(settings: Settings, env: dict[str, str]) -> dict[str, Any]:
    """Pure: the resolved [options.openai_compat] plus the bind boundary as far as config knows it."""
    compat = settings.options.openai_compat
    server = settings.options.http_server
    report: dict[str, Any] = {
        "enabled": compat.enabled,
        "tool_policy": compat.tool_policy,
        "ambiguity_action": compat.ambiguity_action,
        "model_override_policy": compat.model_override_policy,
        "advertised_models": advertised_models(settings),
        "max_queue_depth": compat.max_queue_depth,
        "ledger_capacity": compat.ledger_capacity,
        "permission_timeout_s": compat.permission_timeout_s,
        "session_header_fallbacks": list(compat.session_header_fallbacks),
        "config_files": list(settings.sources),
        "bind": _bind(
            server.addr, bool(server.auth_token or env.get("BMO_AUTH_TOKEN")), server.allow_no_auth
        ),
        "posture": POSTURE_POINTER,
    }
    return report


def live_report(report: dict[str, Any], posture: dict[str, Any], server: str) -> dict[str, Any]:
    """Pure: `report` with the running server's own values (policy, models, bind) in place."""
    live = dict(report)
    for key in ("enabled", "tool_policy", "ambiguity_action", "model_override_policy", "advertised_models"):
        if key in posture:
            live[key] = posture[key]
    bind = posture.get("bind") or {}
    live["bind"] = {
        "addr": bind.get("addr", ""),
        "source": "live",
        "loopback": bind.get("loopback"),
        "auth": "bearer token" if bind.get("auth") else "none (allow_no_auth)",
        "note": f"read from the running server at {server}",
    }
    if bind.get("loopback") is False:
        live["bind"]["warning"] = LOOPBACK_WARNING.format(addr=bind.get("addr", ""))
    return live


def _bind(addr: str, token: bool, allow_no_auth: bool) -> dict[str, Any]:
    try:
        host, _port = parse_addr(addr)
        loopback: bool | str = is_loopback_host(host)
    except ValueError:
        loopback = SERVE_TIME
    bind: dict[str, Any] = {
        "addr": addr,
        "source": "configured",
        "loopback": loopback,
        "auth": "token configured" if token else ("none (allow_no_auth)" if allow_no_auth else SERVE_TIME),
        "note": f"--addr and --auth-token on `bmo serve` override these {SERVE_TIME}; "
        "pass --server URL to read a running server's live values",
    }
    if loopback is False:
        bind["warning"] = LOOPBACK_WARNING.format(addr=addr)
    return bind


def format_compat(report: dict[str, Any]) -> str:
    bind = report["bind"]
    live = bind.get("source") == "live"
    files = ", ".join(report["config_files"]) or "(defaults only)"
    lines = [
        "OpenAI compat (live values of the running server)"
        if live
        else "OpenAI compat (resolved configuration)",
        f"  enabled                {report['enabled']}",
        f"  tool_policy            {report['tool_policy']}",
        f"  ambiguity_action       {report['ambiguity_action']}",
        f"  model_override_policy  {report['model_override_policy']}",
        f"  advertised models      {', '.join(report['advertised_models']) or '(none)'}",
        f"  max_queue_depth        {report['max_queue_depth']}",
        f"  ledger_capacity        {report['ledger_capacity']}",
        f"  {'config files (local)' if live else 'config files':<22} {files}",
        "Bind boundary",
        f"  addr                   {bind['addr']} ({bind.get('source', 'configured')})",
        f"  loopback               {bind['loopback']}",
        f"  auth                   {bind['auth']}",
        f"  note                   {bind['note']}",
    ]
    if "warning" in bind:
        lines.append(bind["warning"])
    lines.append(report["posture"])
    return "\n".join(lines)


def _settings(config: Path | None) -> Settings | None:
    try:
        return load_settings(cwd=Path.cwd(), env=dict(os.environ), extra=config)
    except ConfigError as exc:
        print(f"bmo config: {exc}", file=sys.stderr)
        return None


def show_openai_compat(
    *,
    json_output: Annotated[bool, Parameter(name="--json", help="Print JSON.")] = False,
    config: Annotated[
        Path | None, Parameter(help="An extra config file, on top of the layered ones.")
    ] = None,
    server: Annotated[
        str | None,
        Parameter(help="A running bmo (e.g. http://127.0.0.1:9000/v1): show its live values instead."),
    ] = None,
    auth_token: Annotated[str | None, Parameter(help="Bearer token of --server (or BMO_AUTH_TOKEN).")] = None,
) -> int:
    """The resolved OpenAI-compat configuration, advertised models and bind boundary."""
    settings = _settings(config)
    if settings is None:
        return 2
    env = dict(os.environ)
    report = compat_report(settings, env)
    if server is not None:
        posture = _live_posture(server, auth_token or env.get("BMO_AUTH_TOKEN") or None)
        if posture is None:
            return 1
        report = live_report(report, posture, server)
    print(json.dumps(report, indent=2) if json_output else format_compat(report))
    return 0


def _live_posture(server: str, token: str | None) -> dict[str, Any] | None:
    from app.tui.client import ApiError, BmoClient

    client = BmoClient(server, token, session_id="")
    try:
        return client.posture()
    except ApiError as exc:
        hint = " (pass --auth-token or set BMO_AUTH_TOKEN)" if exc.status == 401 else ""
        print(f"bmo config: {server}: {exc}{hint}", file=sys.stderr)
        return None
    finally:
        client.close()


def show_run_ledger(
    *,
    json_output: Annotated[bool, Parameter(name="--json", help="Print JSON.")] = False,
    config: Annotated[Path | None, Parameter(help="An extra config file.")] = None,
) -> int:
    """Where the run ledger lives, how full it is, route counts and the last outcomes."""
    settings = _settings(config)
    if settings is None:
        return 2
    data = data_dir(dict(os.environ))
    capacity = settings.options.openai_compat.ledger_capacity
    try:
        conn = open_ledger(data, capacity)
    except FileNotFoundError as exc:
        print(f"bmo config: {exc}", file=sys.stderr)
        return 1
    event_store, read_models = describe_store(data)
    report = {
        "event_store": event_store,
        "read_models": read_models,
        "runs": runs.run_count(conn),
        "capacity": capacity,
        "routes": counts.route_counts(conn),
        "top_user_agents": counts.top_user_agents(conn),
        "recent_outcomes": runs.recent_outcomes(conn),
        "degraded": SERVE_TIME,
    }
    if json_output:
        print(json.dumps(report, indent=2))
        return 0
    print(f"event store   {report['event_store']}\nread models   {report['read_models']}")
    print(f"ledger        {report['runs']} / {capacity} runs (degraded flag: {SERVE_TIME})")
    for route, count in report["routes"].items():
        print(f"  route {route:<18} {count}")
    for ua in report["top_user_agents"]:
        print(f"  client {ua['count']:>6}  {ua['user_agent']}")
    for o in report["recent_outcomes"]:
        print(f"  {o['request_id'][:8]}  {o['elapsed_ms'] or 0:>9.1f} ms  {o['outcome']}")
    return 0
