"""`bmo tui` entry: registration, the TTY check, and secrets kept out of sight."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from app.cli.main import build_cli
from app.tui.client import BmoClient
from app.tui.command import tui_command
from app.tui.server import SelfServer


def test_registered_with_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_cli()(["tui", "--help"])
    out = capsys.readouterr().out
    for flag in ("--server", "--auth-token", "--config"):
        assert flag in out


def test_needs_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert tui_command(server="http://127.0.0.1:9", auth_token="secret-token") == 2
    err = capsys.readouterr().err
    assert "needs an interactive terminal" in err
    assert "secret-token" not in err


def test_self_server_token_stays_off_the_command_line(tmp_path: Path) -> None:
    server = SelfServer(data_dir=tmp_path, config=tmp_path / "x.toml")
    assert server.token not in " ".join(server.command())
    assert server.token not in repr(server)
    assert server.command()[-2:] == ["--config", str(tmp_path / "x.toml")]
    assert server.log_path == tmp_path / "logs" / "tui-server.log"
    server.stop()  # never started: a no-op


def test_client_repr_hides_the_token() -> None:
    client = BmoClient("http://127.0.0.1:9/v1/", "secret-token", session_id="tui-1")
    try:
        assert "secret-token" not in repr(client)
        assert client.base_url == "http://127.0.0.1:9"
    finally:
        client.close()
