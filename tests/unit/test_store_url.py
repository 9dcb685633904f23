"""Store selection: BMO_STORE_URL over `[options.store] url`; empty means the embedded SQLite."""

from __future__ import annotations

import pytest

from app.config import Settings, load_settings
from app.events.location import StoreUrlError, store_url
from app.events.postgres_store import redact_url


def settings_with(url: str) -> Settings:
    import msgspec

    return msgspec.convert({"options": {"store": {"url": url}}}, Settings)


def test_default_is_the_embedded_sqlite_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(cwd=tmp_path, env={"BMO_GLOBAL_CONFIG": str(tmp_path / "none")})
    assert store_url(settings, {}) == ""
    assert store_url(None, {}) == ""


def test_the_environment_wins_over_the_config() -> None:
    settings = settings_with("postgresql://cfg@db/bmo")
    assert store_url(settings, {}) == "postgresql://cfg@db/bmo"
    assert store_url(settings, {"BMO_STORE_URL": "postgres://env@db2/x"}) == "postgres://env@db2/x"
    assert store_url(settings_with(""), {"BMO_STORE_URL": "sqlite"}) == ""


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "http://db:5432", "events.db"])
def test_other_urls_are_refused_naming_the_source_without_the_secret(bad: str) -> None:
    with pytest.raises(StoreUrlError, match=r"\[options.store\] url must be empty .* postgresql://"):
        store_url(settings_with(bad), {})
    with pytest.raises(StoreUrlError, match="BMO_STORE_URL") as info:
        store_url(None, {"BMO_STORE_URL": bad.replace("u@", "u:secret@")})
    assert "secret" not in str(info.value)


def test_banners_and_errors_never_show_the_password() -> None:
    assert redact_url("postgresql://bmo:hunter2@db.internal:6543/ledger") == (
        "postgresql://bmo@db.internal:6543/ledger"
    )
