"""The `bmo` command line (cyclopts): thin commands over the same read models."""

from __future__ import annotations

import sys

from cyclopts import App

from app.cli import config_show, dirs, logs, projections, runs, serve, store
from app.tui.command import tui_command

__all__ = ["build_cli", "main", "package_version"]

FALLBACK_VERSION = "0.1.0"  # a source tree that was never installed has no metadata


def package_version() -> str:
    """The installed `bmo` distribution's version (cyclopts would guess 0.0.0 from `app`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bmo")
    except PackageNotFoundError:
        return FALLBACK_VERSION


def build_cli() -> App:
    app = App(name="bmo", help="OpenAI-compatible coding-agent hub.", version=package_version)
    app.command(serve.serve, name="serve")
    app.command(dirs.dirs, name="dirs")
    app.command(logs.logs, name="logs")
    app.command(tui_command, name="tui")
    config_app = App(name="config", help="Resolved configuration and ledger, no server needed.")
    config_app.command(config_show.show_openai_compat, name="show-openai-compat")
    config_app.command(
        config_show.show_openai_compat,
        name="show-open-webui",
        help="Alias of show-openai-compat (same report, same options).",
    )
    config_app.command(config_show.show_run_ledger, name="show-run-ledger")
    app.command(config_app)
    runs_app = App(name="runs", help="The run ledger.")
    runs_app.command(runs.list_runs, name="list")
    runs_app.command(runs.events, name="events")
    app.command(runs_app)
    projections_app = App(name="projections", help="Read models: rebuild by replay.")
    projections_app.command(projections.rebuild, name="rebuild")
    projections_app.command(projections.run, name="run")
    app.command(projections_app)
    store_app = App(name="store", help="The event store: move a SQLite history to PostgreSQL.")
    store_app.command(store.copy, name="copy")
    app.command(store_app)
    return app


def main() -> None:
    result = build_cli()()
    sys.exit(result if isinstance(result, int) else 0)
