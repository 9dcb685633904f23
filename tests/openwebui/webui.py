"""Start a real Open WebUI 0.12.4 (slim, offline, loopback) in front of a real `bmo serve`.

Environment per open-webui.md §3.2. Every process runs in its own process group
and `stop()` kills the group, so nothing outlives a test even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import free_port
from tests.openwebui.install import OpenWebUIVenv

__all__ = ["OpenWebUI", "webui_env"]

DRIVER = Path(__file__).with_name("driver.py")
_STARTUP_TIMEOUT_S = 180.0


def webui_env(
    *, data_dir: Path, bmo_base_url: str, api_key: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Open WebUI's environment: offline, no persistent config, one OpenAI connection to bmo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WEBUI_", "BMO_"))}
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "WEBUI_AUTH": "False",
            "WEBUI_SECRET_KEY": secrets.token_hex(32),
            "ENABLE_PERSISTENT_CONFIG": "False",
            "ENABLE_OLLAMA_API": "False",
            "ENABLE_OPENAI_API": "True",
            "OPENAI_API_BASE_URL": f"{bmo_base_url}/v1",
            "OPENAI_API_KEY": api_key,
            "USE_SLIM_DOCKER": "true",
            "OFFLINE_MODE": "True",
            "HF_HUB_OFFLINE": "1",
            "RAG_EMBEDDING_MODEL": "",
            "ENABLE_VERSION_UPDATE_CHECK": "False",
            "ANONYMIZED_TELEMETRY": "False",
            "DO_NOT_TRACK": "true",
            "SCARF_NO_ANALYTICS": "true",
            "AIOHTTP_CLIENT_TIMEOUT": "60",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "DEFAULT_MODELS": "bmo/local",
            "ENV": "prod",
            "GLOBAL_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class OpenWebUI:
    venv: OpenWebUIVenv
    work_dir: Path  # DATA_DIR, cwd, logs
    bmo_base_url: str
    api_key: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    startup_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "open-webui.log"

    def start(self) -> OpenWebUI:
        data = self.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = webui_env(
            data_dir=data, bmo_base_url=self.bmo_base_url, api_key=self.api_key, extra=self.extra_env
        )
        cmd = [str(self.venv.open_webui), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.work_dir,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_healthy(started + _STARTUP_TIMEOUT_S)
        self.token = self._signin()
        self.startup_s = round(time.monotonic() - started, 1)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"open-webui exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"open-webui not healthy after {_STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def _signin(self) -> str:
        # WEBUI_AUTH=False: any sign-in on the empty DB returns the single admin's token.
        r = httpx.post(f"{self.base_url}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=30)
        r.raise_for_status()
        return r.json()["token"]

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------ REST

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.base_url}{path}", headers=headers, timeout=30, **kw)

    def models(self) -> list[dict[str, Any]]:
        r = self.get("/api/models")
        r.raise_for_status()
        return r.json()["data"]

    def chat(self, chat_id: str) -> dict[str, Any]:
        r = self.get(f"/api/v1/chats/{chat_id}")
        r.raise_for_status()
        return r.json()

    def wait_chat(self, chat_id: str, message_id: str, until: Any, timeout: float = 60.0) -> dict[str, Any]:
        """The stored chat once `until(chat, message)` holds (the DB is written asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            chat = self.chat(chat_id)
            message = chat["chat"]["history"]["messages"].get(message_id, {})
            if until(chat, message) or time.monotonic() > deadline:
                return chat
            time.sleep(0.25)

    # ------------------------------------------------------------- drivers

    def drive(self, command: str, request: dict[str, Any], timeout: float = 180.0) -> dict[str, Any]:
        """Run `driver.py <command>` with the Open WebUI venv's interpreter; its JSON answer."""
        payload = {"base": self.base_url, "token": self.token, **request}
        proc = subprocess.Popen(
            [str(self.venv.python), str(DRIVER), command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(payload).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"driver {command} timed out after {timeout}s:\n{err.decode()[-3000:]}"
            ) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise AssertionError(
                f"driver {command} exited {proc.returncode}:\n{err.decode()[-3000:]}\n"
                f"--- open-webui log ---\n{self.log_tail()}"
            )
        return json.loads(out)

    def turn(self, model: str, prompt: str, **kw: Any) -> dict[str, Any]:
        return self.drive("turn", {"model": model, "prompt": prompt, **kw})
