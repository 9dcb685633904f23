"""The four arms of the bench and how each is started.

- direct:  the mock upstream itself (the floor);
- bmo:     `bmo serve` with an `openai` provider pointing at the mock;
- bare:    `bench/bare_proxy.py` (Litestar + granian + aiohttp, no bmo logic);
- litellm: the LiteLLM proxy from `bench/.venv-litellm`, inside `unshare -n`
           (a loopback-only network namespace) with its own mock, when possible.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Procs, free_port, wait_http

__all__ = [
    "LITELLM_VENV",
    "PROBE_MODEL",
    "REPO",
    "Arm",
    "Netns",
    "start_bare",
    "start_bmo",
    "start_direct",
    "start_litellm",
    "start_mock",
    "start_mock_and_sink",
    "start_netns",
    "start_otlp_sink",
]

REPO = Path(__file__).resolve().parents[1]
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
BMO_TOKEN = "bench-" + secrets.token_hex(8)
PROBE_MODEL = "probe-model"


@dataclass
class Arm:
    name: str
    port: int
    model: str
    token: str
    roots: list[int]  # server process trees whose CPU and RSS are measured
    prefix: list[str] = field(default_factory=list)  # argv prefix for load tools (nsenter)
    data_dir: Path | None = None  # bmo only
    notes: list[str] = field(default_factory=list)


@dataclass
class Netns:
    holder_pid: int

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder_pid}/ns/net"]


def _granian(target: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--http", "1"]
    return [*argv, "--workers", "1", "--no-ws", "--host", "127.0.0.1", "--port", str(port), target]


def start_mock(
    procs: Procs, name: str, netns: Netns | None = None, port: int | None = None, pin: str = ""
) -> tuple[int, int]:
    """A mock upstream (in the namespace if given, on the `pin` CPUs if given); (port, pid)."""
    port = port or free_port()
    prefix = netns.prefix if netns else []
    if pin:
        prefix = ["taskset", "-c", pin, *prefix]
    # granian's backpressure (default: backlog, 1024) is a per-connection permit: idle keep-alive
    # connections from the gateways would otherwise cap the many-open-streams test below 1000.
    argv = [*_granian("bench.mock_upstream:app", port), "--backlog", "4096", "--backpressure", "8192"]
    proc = procs.spawn(name, [*prefix, *argv], cwd=REPO)
    wait_http(port, path="/v1/models", proc=proc, netns_pid=netns.holder_pid if netns else None)
    return port, proc.pid


def start_direct(mock_port: int, mock_pid: int) -> Arm:
    return Arm("direct", mock_port, "mock-model", "x", [mock_pid])


def start_bare(procs: Procs, mock_port: int) -> Arm:
    port = free_port()
    env = {**os.environ, "BARE_UPSTREAM": f"http://127.0.0.1:{mock_port}"}
    proc = procs.spawn("bare", _granian("bench.bare_proxy:app", port), cwd=REPO, env=env)
    wait_http(port, path="/health", proc=proc)
    return Arm("bare", port, "mock-model", "x", [proc.pid])


def start_mock_and_sink(procs: Procs, work: Path, *, otel: bool) -> tuple[int, int | None]:
    """The mock and, with OpenTelemetry on (as in `bench.run`, and as users run it), the OTLP
    sink bmo exports to: (mock port, sink port or None)."""
    mock_port, _ = start_mock(procs, "mock")
    otlp = start_otlp_sink(procs, work) if otel else None
    return mock_port, (otlp[0] if otlp else None)


def start_otlp_sink(procs: Procs, work: Path) -> tuple[int, Path] | None:
    """A local OTLP receiver process, if the test fake exists; (port, counts file)."""
    if not (REPO / "tests" / "fakes" / "otlp_receiver.py").exists():
        return None
    out = work / "otlp_counts.json"
    procs.spawn("otlp_sink", [sys.executable, "-m", "bench.otlp_sink", "--out", str(out)], cwd=REPO)
    log = procs.log_dir / "otlp_sink.log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"PORT (\d+)", log.read_text() if log.exists() else "")
        if match:
            return int(match.group(1)), out
        time.sleep(0.1)
    raise TimeoutError("the OTLP sink did not start")


def _bmo_toml(mock_port: int, otlp_port: int | None) -> str:
    text = (
        '[options]\nmodel = "mock/mock-model"\n\n'
        f'[providers.mock]\ntype = "openai"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
        f'api_key = "x"\nmodels = ["mock-model", "{PROBE_MODEL}"]\n'
    )
    if otlp_port is not None:
        text += (
            "\n[options.telemetry.otel]\nenabled = true\n"
            f'endpoint = "http://127.0.0.1:{otlp_port}"\nprotocol = "http/protobuf"\n'
        )
    return text


def start_bmo(
    procs: Procs,
    mock_port: int,
    work: Path,
    otlp_port: int | None,
    *,
    tree: Path | None = None,
    name: str = "bmo",
    workers: int = 1,
) -> Arm:
    """`bmo serve` on the mock; from another checkout's `app/` when `tree` is given (its
    own home and data dir under `work/name`), so two versions can be measured in one run."""
    home = work / name
    (home / "config").mkdir(parents=True, exist_ok=True)
    data = home / "data"  # fresh per run of the harness
    (home / "bmo.toml").write_text(_bmo_toml(mock_port, otlp_port))
    port = free_port()
    env = {**os.environ, "BMO_GLOBAL_DATA": str(data), "BMO_GLOBAL_CONFIG": str(home / "config")}
    env.pop("BMO_AUTH_TOKEN", None)
    notes = [] if otlp_port else ["OTel off: tests/fakes/otlp_receiver.py not found"]
    # `python -m app` imports this checkout's (or the other one's) package, not an installed one
    env["PYTHONPATH"] = str((tree or REPO).resolve())
    if tree is not None:
        notes.append(f"app/ from {tree.resolve()} ({_git_head(tree)})")
    argv = [sys.executable, "-m", "app", "serve", "--addr", f"127.0.0.1:{port}", "--auth-token", BMO_TOKEN]
    argv += ["--workers", str(workers)]
    proc = procs.spawn(name, argv, cwd=home, env=env)
    wait_http(port, path="/v1/models", proc=proc, timeout=60)
    return Arm(name, port, "mock/mock-model", BMO_TOKEN, [proc.pid], data_dir=data, notes=notes)


def _git_head(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()[:80] or "not a git checkout"


def start_netns(procs: Procs) -> Netns | None:
    """A loopback-only network namespace held open by a sleeping process; None if unshare fails."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0 or shutil.which("nsenter") is None:
        return None
    holder = procs.spawn("netns", ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 100000"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        check = subprocess.run(
            ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "ip", "-o", "link", "show", "lo"],
            capture_output=True,
            text=True,
            check=False,
        )
        if "UP" in check.stdout and "LOOPBACK" in check.stdout:
            return Netns(holder.pid)
        time.sleep(0.1)
    procs.stop(holder)
    return None


def _litellm_config(path: Path, mock_port: int) -> Path:
    config = {
        "model_list": [
            {
                "model_name": "mock-model",
                "litellm_params": {
                    "model": "openai/mock-model",
                    "api_base": f"http://127.0.0.1:{mock_port}/v1",
                    "api_key": "dummy",
                },
            }
        ],
        "litellm_settings": {
            "set_verbose": False,
            "drop_params": True,
            "turn_off_message_logging": True,
            "telemetry": False,
        },
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


def litellm_env(key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_MODE="PRODUCTION",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
        LITELLM_MASTER_KEY=key,
        AUTH_KEY=key,
        PATH=f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
    )
    return env


def start_litellm(
    procs: Procs, work: Path, netns: Netns | None, host_mock: int
) -> tuple[Arm, Callable[[], None]]:
    """Spawn LiteLLM (it takes ~10-20 s to start); returns the arm and a function that waits for it."""
    prefix = netns.prefix if netns else []
    notes: list[str] = []
    if netns is not None:
        mock_port, _ = start_mock(procs, "mock_netns", netns, port=9100)
        notes.append("inside `unshare -n` (loopback-only namespace) with its own mock instance")
    else:
        mock_port = host_mock
        notes.append("unshare -n unavailable: on the host loopback, sharing the host mock")
    key = "sk-" + secrets.token_hex(32)
    config = _litellm_config(work / "litellm_config.yaml", mock_port)
    port = 4000 if netns else free_port()
    argv = [*prefix, str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = procs.spawn("litellm", argv, cwd=work, env=litellm_env(key))

    def wait() -> None:
        netns_pid = netns.holder_pid if netns else None
        wait_http(port, path="/health/liveliness", proc=proc, timeout=120, netns_pid=netns_pid)

    return Arm("litellm", port, "mock-model", key, [proc.pid], prefix=prefix, notes=notes), wait
