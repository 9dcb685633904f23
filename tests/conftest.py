"""Fixtures for both event stores: the embedded SQLite one and PostgreSQL.

A test module marked `both_stores` runs each of its tests that use `store_kind`
(directly, or through `store_url`, `make_server`, `server`, ...) once per store.
The PostgreSQL server is started only when a test needs it (tests/pg.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PgServer, database_url, pg_server

STORES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store_kind", STORES, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One server for the whole run (a throwaway cluster, or BMO_TEST_POSTGRES_URL)."""
    with pg_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh database of this test's own."""
    with database_url(postgres_server) as url:
        yield url


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str:
    """Empty for the embedded SQLite store, else a fresh PostgreSQL database's URL."""
    if store_kind == "sqlite":
        return ""
    return request.getfixturevalue("postgres_url")
