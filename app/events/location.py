"""Where the event store lives: the embedded SQLite file, or a PostgreSQL server.

`BMO_STORE_URL` wins over `[options.store] url`; empty (the default) means
SQLite under the data dir, exactly as without the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_INSTANCE", "ENV_STORE_URL", "StoreUrlError", "store_url"]

ENV_STORE_URL = "BMO_STORE_URL"
ENV_INSTANCE = "BMO_INSTANCE_ID"  # set by `bmo serve` for its workers: one instance, one lease


class StoreUrlError(ValueError):
    """The store URL names something bmo cannot use."""


def store_url(settings: Any | None, env: Mapping[str, str]) -> str:
    """The PostgreSQL URL to use, or "" for the embedded SQLite store."""
    configured = settings.options.store.url if settings is not None else ""
    url = (env.get(ENV_STORE_URL) or configured or "").strip()
    if url in ("", "sqlite"):
        return ""
    if not url.startswith(("postgresql://", "postgres://")):
        source = ENV_STORE_URL if env.get(ENV_STORE_URL) else "[options.store] url"
        raise StoreUrlError(
            f"{source} must be empty (the embedded SQLite store) or a postgresql:// URL, "
            f"not {url.split('://')[0] + '://...' if '://' in url else repr(url)}"
        )
    return url
