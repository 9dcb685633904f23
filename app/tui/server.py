"""The server `bmo tui` starts for itself when no `--server` is given.

A child process: `python -m app serve --addr 127.0.0.1:<free port>` with a
random token handed over in `BMO_AUTH_TOKEN` (never on the command line, where
`ps` would show it), output to `<data dir>/logs/tui-server.log`, ready once
`/readyz` answers 200, stopped (SIGTERM to its process group, then SIGKILL)
when the TUI exits.

Why not granian's embedded server (`granian.server.embed.Server`, which does
run `app.cli.worker:asgi` from a background thread's event loop): the server
then shares the TUI's process, so its JSON-line records on stderr land on the
urwid screen, its configuration has to travel through process-wide
`os.environ`, its Python work shares the TUI's GIL, granian marks the mode
experimental — and, measured here, stopping it can crash the whole process
(a projector step still in a worker thread when the store closes), which would
leave the user's terminal in raw mode. A child process isolates all of that.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["SelfServer", "ServerStartError", "free_port"]

LOG_NAME = "tui-server.log"


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SelfServer:
    data_dir: Path
    config: Path | None = None
    cwd: Path | None = None
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / LOG_NAME

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "app", "serve", "--addr", f"127.0.0.1:{self.port}"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self, timeout: float = 30.0) -> SelfServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["BMO_AUTH_TOKEN"] = self.token
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own group: a terminal Ctrl-C reaches the TUI only
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerStartError(
                    f"the local server exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServerStartError(f"the local server was not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> SelfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
