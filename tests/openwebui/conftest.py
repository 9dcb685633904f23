"""Fixtures: a cached Open WebUI venv, real `bmo serve` processes, Open WebUI in front of them.

Four Open WebUI instances are started lazily (module scope), each in its own
temp DATA_DIR, all offline on loopback:

- `stack`: bmo (`chat_only`, token auth, `bmo/local` + a scripted upstream `up/fake-model`)
  behind Open WebUI with the recommended settings (docs/open-webui.md): the
  `{"X-OpenWebUI-Task": "{{TASK}}"}` connection header and
  `ENABLE_FORWARD_USER_INFO_HEADERS=True` (chat id → bmo session).
  bmo trusts 127.0.0.1 as a requester proxy, so the forwarded user is recorded.
- `auto_stack`: bmo with `tool_policy = "auto_approve"` and its own scripted upstream;
  Open WebUI forwards the chat id but sets no task header (bmo falls back to `### Task:`);
  no trusted proxies, so the forwarded identity headers are ignored (and that is recorded).
- `approval_stack`: `chat_only` bmo with `public_url` set (review links in the question
  block) and a short `permission_timeout_s`, behind Open WebUI (test_approval_browser.py).
- `wrong_key_webui`: a second Open WebUI against `stack`'s bmo with a wrong API key.

Background tasks of chats on the scripted model go to `bmo/local`
(`TASK_MODEL_EXTERNAL`), so the upstream's script is consumed by main turns only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import BmoServer, free_port
from tests.fakes.openai_upstream import FakeOpenAI
from tests.openwebui.install import InstallError, OpenWebUIVenv, ensure_venv
from tests.openwebui.webui import OpenWebUI

TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"Open WebUI e2e timings: {parts}")


@dataclass
class Stack:
    bmo: BmoServer
    webui: OpenWebUI
    upstream: FakeOpenAI | None = None

    def runs(self, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("limit", 500)
        r = httpx.get(f"{self.bmo.base_url}/v1/openai-compat/runs", params=params, headers=self.bmo.headers)
        r.raise_for_status()
        return r.json()["data"]

    def run_events(self, request_id: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.bmo.base_url}/v1/openai-compat/runs/{request_id}/events", headers=self.bmo.headers
        )
        r.raise_for_status()
        return r.json()["data"]

    def wait_runs(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0, **params: Any
    ) -> list[dict[str, Any]]:
        """Ledger rows once `predicate(rows)` holds (the projector catches up asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.runs(**params)
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


@pytest.fixture(scope="session")
def owui_venv() -> OpenWebUIVenv:
    started = time.monotonic()
    try:
        venv = ensure_venv()
    except InstallError as exc:  # no silent skip: these tests are part of the suite
        pytest.fail(f"Open WebUI could not be installed, so its end-to-end tests cannot run:\n{exc}")
    TIMINGS["venv (install or cache check)"] = time.monotonic() - started
    return venv


def _workspace(tmp: Path) -> Path:
    ws = tmp / "workspace"
    (ws / "src").mkdir(parents=True)
    (ws / ".git").mkdir()  # the project root for config discovery
    (ws / "README.md").write_text("# Demo project\n\nTODO: write docs\n")
    (ws / "src" / "main.py").write_text("def main():\n    return 42  # TODO tidy\n")
    return ws


def _provider(upstream: FakeOpenAI) -> str:
    return (
        f'[providers.up]\ntype = "openai"\nbase_url = "{upstream.base_url}"\napi_key = "sk-upstream"\n'
        'models = ["fake-model"]\nmax_retries = 0\ntimeout_s = 30\n'
    )


def _start_stack(
    tmp: Path,
    venv: OpenWebUIVenv,
    name: str,
    bmo_config: str,
    webui_env: dict[str, str],
    upstream: FakeOpenAI | None,
    bmo_env: dict[str, str] | None = None,
    bmo_port: int | None = None,
) -> Iterator[Stack]:
    config = tmp / f"{name}-bmo.toml"  # outside the workspace, so the agent's file listing stays clean
    config.write_text(bmo_config)
    bmo = BmoServer(
        workspace=_workspace(tmp),
        data_dir=tmp / f"{name}-bmo" / "data",
        extra_args=("--config", str(config)),
        extra_env=bmo_env or {},
        **({"port": bmo_port} if bmo_port else {}),
    )
    webui = OpenWebUI(venv, tmp / f"{name}-webui", "", "", extra_env=webui_env)
    try:
        bmo.start()
        webui.bmo_base_url, webui.api_key = bmo.base_url, bmo.token or "none"
        webui.start()
        TIMINGS[f"{name}: open-webui startup"] = webui.startup_s
        yield Stack(bmo, webui, upstream)
    finally:
        webui.stop()
        bmo.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    owui_venv: OpenWebUIVenv,
    upstream: FakeOpenAI,
) -> Iterator[Stack]:
    config = '[options.openai_compat]\ntool_policy = "chat_only"\n\n' + _provider(upstream)
    env = {
        "OPENAI_API_CONFIGS": json.dumps({"0": {"headers": {"X-OpenWebUI-Task": "{{TASK}}"}}}),
        "ENABLE_FORWARD_USER_INFO_HEADERS": "True",
        "TASK_MODEL_EXTERNAL": "bmo/local",
    }
    tmp = tmp_path_factory.mktemp("stack")
    # Open WebUI runs on this host: let it assert the user's identity (X-OpenWebUI-User-*).
    trusted = {"BMO_REQUESTER_TRUSTED_PROXIES": "127.0.0.1"}
    yield from _start_stack(tmp, owui_venv, "stack", config, env, upstream, trusted)


@pytest.fixture(scope="module")
def auto_stack(tmp_path_factory: pytest.TempPathFactory, owui_venv: OpenWebUIVenv) -> Iterator[Stack]:
    with FakeOpenAI(models=("fake-model",)) as fake:
        config = '[options.openai_compat]\ntool_policy = "auto_approve"\n\n' + _provider(fake)
        env = {"ENABLE_FORWARD_USER_INFO_HEADERS": "True", "TASK_MODEL_EXTERNAL": "bmo/local"}
        tmp = tmp_path_factory.mktemp("auto")
        yield from _start_stack(tmp, owui_venv, "auto_approve", config, env, fake)


APPROVAL_TIMEOUT_S = 40


@pytest.fixture(scope="module")
def approval_stack(tmp_path_factory: pytest.TempPathFactory, owui_venv: OpenWebUIVenv) -> Iterator[Stack]:
    """`chat_only` bmo with review links (`public_url` = its own address) and a short question timeout.

    The timeout is short enough for the time-out scenario and long enough for a browser
    to follow a link and press a button on a loaded machine; Open WebUI's own request
    timeout is raised above it so the waiting turn is not cut by Open WebUI.
    """
    port = free_port()
    config = (
        '[options.openai_compat]\ntool_policy = "chat_only"\n'
        f'permission_timeout_s = {APPROVAL_TIMEOUT_S}\npublic_url = "http://127.0.0.1:{port}"\n'
    )
    env = {
        "ENABLE_FORWARD_USER_INFO_HEADERS": "True",
        "TASK_MODEL_EXTERNAL": "bmo/local",
        "AIOHTTP_CLIENT_TIMEOUT": "180",
    }
    trusted = {"BMO_REQUESTER_TRUSTED_PROXIES": "127.0.0.1"}
    tmp = tmp_path_factory.mktemp("approval")
    yield from _start_stack(tmp, owui_venv, "approval", config, env, None, trusted, bmo_port=port)


@pytest.fixture(scope="module")
def wrong_key_webui(
    tmp_path_factory: pytest.TempPathFactory, owui_venv: OpenWebUIVenv, stack: Stack
) -> Iterator[OpenWebUI]:
    # A static model list: with a wrong key `GET /v1/models` is refused (401), so Open WebUI
    # would list no models and never send the chat; this is what a rotated token looks like.
    env = {"OPENAI_API_CONFIGS": json.dumps({"0": {"model_ids": ["bmo/local"]}})}
    webui = OpenWebUI(
        owui_venv, tmp_path_factory.mktemp("wrong-key"), stack.bmo.base_url, "sk-wrong-key", extra_env=env
    )
    try:
        webui.start()
        TIMINGS["wrong key: open-webui startup"] = webui.startup_s
        yield webui
    finally:
        webui.stop()
