"""`bmo dirs`: where config, data, the event store, read models and logs live."""

from __future__ import annotations

import os
from pathlib import Path

from app.cli.projections import describe_store
from app.config import config_files, data_dir, global_config_dir
from app.telemetry import log_path

__all__ = ["dirs"]


def dirs() -> int:
    """Print the directories and files bmo uses."""
    env = dict(os.environ)
    data = data_dir(env)
    event_store, read_models = describe_store(data)
    rows = [
        ("global config", global_config_dir(env) / "bmo.toml"),
        ("data dir", data),
        ("event store", event_store),
        ("read models", read_models),
        ("log", log_path(data)),
    ]
    for name, path in rows:
        print(f"{name:<14} {path}")
    for path in config_files(Path.cwd(), env, None):
        print(f"{'config file':<14} {path}")
    return 0
