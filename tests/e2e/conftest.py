from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.server import BmoServer


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    (ws / "src").mkdir(parents=True)
    (ws / ".git").mkdir()  # the project root for config discovery
    (ws / "README.md").write_text("# Demo project\n\nTODO: write docs\n")
    (ws / "src" / "main.py").write_text("def main():\n    return 42  # TODO tidy\n")
    return ws


@pytest.fixture
def make_server(tmp_path: Path, workspace: Path, store_url: str) -> Iterator[Callable[..., BmoServer]]:
    started: list[BmoServer] = []

    def make(**kwargs: object) -> BmoServer:
        kwargs.setdefault("data_dir", tmp_path / "data")
        server = BmoServer(workspace=workspace, **kwargs)  # type: ignore[arg-type]
        if store_url:  # the PostgreSQL arm of a `both_stores` module
            server.extra_env.setdefault("BMO_STORE_URL", store_url)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., BmoServer]) -> BmoServer:
    return make_server()


@pytest.fixture
def client(server: BmoServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.token, max_retries=0)


@pytest.fixture
def http(server: BmoServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as c:
        yield c
