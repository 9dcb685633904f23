"""Shared pieces of the reliability and security suite (issue 9).

Each test module starts its own real `bmo serve` (module scope: one server per
module, many requests), through `tests.e2e.server.BmoServer`.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.e2e.server import BmoServer

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
ENVELOPE_KEYS = {"message", "type", "param", "code"}


# Hypothesis (under schemathesis) writes caches under its home dir: keep them out of the work tree.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "bmo-fuzz-hypothesis"))


def make_workspace(root: Path) -> Path:
    workspace = root / "workspace"
    (workspace / "src").mkdir(parents=True)
    (workspace / ".git").mkdir()
    (workspace / "README.md").write_text("# Demo project\n\nTODO: write docs\n")
    (workspace / "src" / "main.py").write_text("def main():\n    return 42\n")
    return workspace


@pytest.fixture(scope="module")
def module_root(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


def start_server(root: Path, config_text: str | None = None, **kwargs: object) -> BmoServer:
    workspace = root / "workspace" if (root / "workspace").exists() else make_workspace(root)
    server = BmoServer(workspace=workspace, data_dir=root / "data", config_text=config_text, **kwargs)  # type: ignore[arg-type]
    return server.start()


@pytest.fixture(scope="module")
def served(module_root: Path) -> Iterator[BmoServer]:
    """A plain server on the defaults plus a short permission timeout (nothing waits 120 s)."""
    server = start_server(
        module_root,
        '[options.openai_compat]\npermission_timeout_s = 1\nambiguity_action = "code"\n',
    )
    yield server
    server.stop()


def assert_envelope(status: int, headers: httpx.Headers, body: bytes) -> dict:
    """The OpenAI error envelope with an X-Request-Id, and never a traceback."""
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    assert REQUEST_ID.fullmatch(headers.get("x-request-id", "")), headers
    assert b"Traceback" not in body
    document = httpx.Response(status, content=body).json()
    assert set(document) == {"error"}, document
    error = document["error"]
    assert set(error) >= ENVELOPE_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return error


def records_of(server: BmoServer, request_id: str, timeout: float = 10.0) -> list[dict]:
    """The request's records once its terminal action is written (records are batched)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [r for r in server.records() if r.get("request_id") == request_id]
        if any(r["msg"] == "openai_compat.action" and r.get("terminal") for r in mine):
            time.sleep(0.05)  # nothing else of this request may follow the terminal record
            return [r for r in server.records() if r.get("request_id") == request_id]
        if time.monotonic() > deadline:
            return mine
        time.sleep(0.02)


def assert_recorded_once(server: BmoServer, request_id: str, outcome: str) -> list[dict]:
    """Exactly one `openai_compat.fired` and one terminal `openai_compat.action` (SPEC §11)."""
    mine = records_of(server, request_id)
    fired = [r for r in mine if r["msg"] == "openai_compat.fired"]
    terminal = [r for r in mine if r["msg"] == "openai_compat.action" and r.get("terminal")]
    assert len(fired) == 1, mine
    assert len(terminal) == 1, mine
    assert terminal[0]["outcome"] == outcome, terminal[0]
    return mine


def raw_exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send bytes on a fresh TCP connection; return what came back and whether the server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split HTTP/1.1 responses with Content-Length bodies (what bmo and granian send here)."""
    out = []
    while data.startswith(b"HTTP/1."):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out
