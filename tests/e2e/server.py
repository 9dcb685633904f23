"""Start a real `bmo serve` (granian) on a free loopback port for a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["BmoServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BmoServer:
    workspace: Path
    data_dir: Path
    token: str | None = "test-token-0123456789"
    extra_args: tuple[str, ...] = ()
    config_text: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "bmo.jsonl"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("BMO_AUTH_TOKEN", None)
        env["BMO_GLOBAL_DATA"] = str(self.data_dir)
        env["BMO_GLOBAL_CONFIG"] = str(self.data_dir.parent / "global-config")
        env["KUBECONFIG"] = str(self.data_dir.parent / "no-kubeconfig")  # never a real cluster
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # test MCP servers import tests.*
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "app", "serve", "--addr", f"127.0.0.1:{self.port}"]
        cmd += ["--auth-token", self.token] if self.token else ["--allow-no-auth"]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> BmoServer:
        if self.config_text is not None:
            (self.workspace / "bmo.toml").write_text(self.config_text)
        self.stderr_path = self.data_dir.parent / f"serve-{self.port}.stderr"
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workspace,
                env=self.env(),
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bmo serve exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bmo serve not ready after {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def records(self) -> list[dict]:
        import json

        if not self.log_path.exists():
            return []
        text = self.log_path.read_text()
        # the server appends whole batches of lines while we read: a line without its
        # newline is still being written, so only complete lines count
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def records_for(self, request_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        """The records of one request, once at least `count` are written (records are batched)."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [r for r in self.records() if r.get("request_id") == request_id]
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.05)
