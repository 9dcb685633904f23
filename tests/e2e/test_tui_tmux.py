"""`bmo tui` in a real terminal: tmux (80x24) drives the keyboard and reads the screen.

Each test owns a private tmux server (`-L <unique socket>`, no user config),
killed in teardown even when the test fails; a self-started bmo server is the
TUI's own child and must be gone after `/quit`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import BmoServer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (.ci/run installs it)"),
]

COLS, ROWS = 80, 24


def bmo_command() -> list[str]:
    exe = shutil.which("bmo", path=str(Path(sys.executable).parent)) or shutil.which("bmo")
    return [exe] if exe else [sys.executable, "-m", "app"]


class Tmux:
    def __init__(self, rc_file: Path) -> None:
        self.socket = f"bmo-tui-test-{uuid.uuid4().hex[:10]}"
        self.rc_file = rc_file

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str], stderr: Path | None = None) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        redirect = f" 2> {shlex.quote(str(stderr))}" if stderr else ""
        command = f"env {exports} {shlex.join(argv)}{redirect}"
        inner = f"cd {shlex.quote(str(cwd))} && {command}; echo $? > {self.rc_file}"
        self.tmux(
            "new-session", "-d", "-s", "tui", "-x", str(COLS), "-y", str(ROWS), f"sh -c {shlex.quote(inner)}"
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def send(self, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", "tui", "-l", text)
        if enter:
            self.tmux("send-keys", "-t", "tui", "Enter")

    def key(self, name: str) -> None:
        self.tmux("send-keys", "-t", "tui", name)

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if needle in screen:
                return screen
            if self.rc_file.exists():
                break
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not on the tmux screen:\n{screen}")

    def wait_reading(self, needle: str, command: str, timeout: float = 30) -> str:
        """Re-send `command` until `needle` shows (a read model may trail the last answer)."""
        deadline = time.monotonic() + timeout
        while True:
            self.send(command)
            try:
                return self.wait_for(needle, timeout=1.5)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def wait_exit(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_file.exists() and self.rc_file.read_text().strip():
                return self.rc_file.read_text().strip()
            time.sleep(0.1)
        raise AssertionError(f"bmo tui did not exit; screen:\n{self.screen()}")

    def kill(self) -> None:
        self.tmux("kill-server")
        tmpdir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (tmpdir / self.socket).unlink(missing_ok=True)  # tmux can leave its socket file behind


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path / "tui.rc")
    try:
        yield session
    finally:
        session.kill()


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "BMO_GLOBAL_CONFIG": str(tmp_path / "global-config"),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        "TERM": "xterm-256color",
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


def test_tui_against_a_running_server(
    make_server: Callable[..., BmoServer], tmux: Tmux, tmp_path: Path, workspace: Path
) -> None:
    server = make_server()
    env = {**base_env(tmp_path), "BMO_AUTH_TOKEN": server.token or ""}
    tmux.start([*bmo_command(), "tui", "--server", f"{server.base_url}/v1"], cwd=workspace, env=env)
    first = tmux.wait_for("OpenAI compat: enabled (chat_only)")
    assert first.splitlines()[0].rstrip() == "OpenAI compat: enabled (chat_only)"

    tmux.send("list files")
    answer = tmux.wait_for("bmo › Here are the entries")
    assert "you › list files" in answer
    assert "⚙ list_dir" in answer
    assert "README.md" in tmux.wait_for("src/")

    report = tmux.wait_reading("chat_completions=1", "/openai-compat")  # the ledger may trail
    assert "OpenAI compat — live posture" in report
    assert "enabled: yes   tool_policy: chat_only   ambiguity_action: ask" in report
    assert "advertised models: bmo/local" in report
    assert "chat_completions=1" in report
    assert "top User-Agents:" in report and "bmo-tui/" in report
    assert "last 5 outcomes:" in report
    assert re.search(r"[0-9a-f]{8}…  \[ *\d+ ms\]  final_answer", report)
    assert all(len(line) <= COLS for line in report.splitlines())

    tmux.send("/bogus")
    assert "unknown command /bogus" in tmux.wait_for("unknown command")

    tmux.tmux("resize-window", "-t", "tui", "-x", "140", "-y", "40")  # wide: the sidebar appears
    wide = tmux.wait_for("│ OpenAI compat: enabled (chat_only)")
    assert "│ session: tui-" in wide
    assert "OpenAI compat — live posture" in wide  # the open view survives the resize
    tmux.tmux("resize-window", "-t", "tui", "-x", str(COLS), "-y", str(ROWS))
    deadline = time.monotonic() + 10
    while not tmux.screen().startswith("OpenAI compat: enabled (chat_only)") and time.monotonic() < deadline:
        time.sleep(0.2)
    narrow = tmux.screen()
    assert narrow.splitlines()[0].rstrip() == "OpenAI compat: enabled (chat_only)"
    assert "│" not in narrow

    tmux.send("/quit")
    assert tmux.wait_exit() == "0"


def test_tui_self_started_server_and_permission_flow(tmux: Tmux, tmp_path: Path, workspace: Path) -> None:
    data = tmp_path / "tui-data"
    env = {**base_env(tmp_path), "BMO_GLOBAL_DATA": str(data)}
    tmux.start([*bmo_command(), "tui"], cwd=workspace, env=env)
    screen = tmux.wait_for("OpenAI compat: enabled (chat_only)", timeout=45)
    port = re.search(r"connected to http://127\.0\.0\.1:(\d+)", screen)
    assert port, screen
    url = f"http://127.0.0.1:{port.group(1)}"
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401  # a random token guards it

    tmux.send("list files")
    assert "README.md" in tmux.wait_for("bmo › Here are the entries")

    tmux.send("run `echo hi`")
    tmux.wait_for("⏸ permission needed: bash")
    tmux.send("/questions")
    questions = tmux.wait_for("< Allow once >")
    assert '"command": "echo hi"' in questions
    tmux.key("Enter")  # Allow has the focus
    tmux.wait_for("allowed: bash")
    tmux.key("Escape")
    done = tmux.wait_for("Ran `echo hi`")
    assert "permission allow (by operator)" in done
    assert "✅ Allowed by the operator (tui)." in done  # the streamed decision line

    tmux.send("/quit")
    assert tmux.wait_exit() == "0"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/readyz", timeout=2)  # the TUI stopped its server
    log = (data / "logs" / "tui-server.log").read_text()
    assert "bmo: serving on" in log


def test_tui_refuses_a_wrong_token(
    make_server: Callable[..., BmoServer], tmux: Tmux, tmp_path: Path, workspace: Path
) -> None:
    server = make_server()
    env = {**base_env(tmp_path), "BMO_AUTH_TOKEN": "wrong-token"}
    err = tmp_path / "tui.stderr"
    tmux.start([*bmo_command(), "tui", "--server", server.base_url], cwd=workspace, env=env, stderr=err)
    assert tmux.wait_exit() == "2"
    message = err.read_text()
    assert "bmo tui: 401" in message and "--auth-token" in message
    assert "wrong-token" not in message
