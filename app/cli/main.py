"""The `bmo` command line (cyclopts): thin commands over the same read models."""

from __future__ import annotations

import sys

from cyclopts import App

from app.cli import dirs, projections, serve

__all__ = ["build_cli", "main"]


def build_cli() -> App:
    app = App(name="bmo", help="OpenAI-compatible coding-agent hub.")
    app.command(serve.serve, name="serve")
    app.command(dirs.dirs, name="dirs")
    projections_app = App(name="projections", help="Read models: rebuild by replay.")
    projections_app.command(projections.rebuild, name="rebuild")
    app.command(projections_app)
    return app


def main() -> None:
    result = build_cli()()
    sys.exit(result if isinstance(result, int) else 0)
