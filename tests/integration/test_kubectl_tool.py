"""The kubectl tool: verb and flag policy, retries with backoff, real kubectl without a cluster."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import Kubectl, ToolContext, ToolError, ToolResult
from app.agent.tools.kubectl import ALLOWED_VERBS, OUTPUT_CAP

REAL_KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ToolContext(workspace=ws.resolve())


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig naming a closed local port: every request is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "kube" / "config"
    config.parent.mkdir()
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
        f"clusters: [{{name: none, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: none, user: {}}]\n"
        "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(config))


def fake_kubectl(tmp_path: Path, body: str) -> tuple[str, Path]:
    """An executable that logs its arguments, one invocation a line, then runs `body`."""
    log = tmp_path / "calls.log"
    script = tmp_path / "fake-kubectl"
    script.write_text(f'#!/bin/bash\nprintf "%s|" "$@" >> {log}\necho >> {log}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.rstrip("|").split("|") for line in log.read_text().splitlines()]


def run(tool: Kubectl, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return asyncio.run(tool.run(args, ctx))


def test_schema_and_flags() -> None:
    assert Kubectl.schema.name == "kubectl"
    assert Kubectl().mutating is False
    assert Kubectl.schema.parameters["properties"]["verb"]["enum"] == list(ALLOWED_VERBS)


# --- real kubectl, no cluster -----------------------------------------------


@pytest.mark.usefixtures("no_cluster")
def test_real_kubectl_without_cluster_exhausts_retries(tmp_path: Path, ctx: ToolContext) -> None:
    # A wrapper around the real binary, only to count the invocations.
    wrapper, log = fake_kubectl(tmp_path, f'exec {REAL_KUBECTL} "$@"')
    result = run(Kubectl(binary=wrapper, tries=3, backoff_s=0.01), {"verb": "get", "args": ["pods"]}, ctx)
    assert not result.ok
    assert result.error_kind == "k8s_retry_exhausted"
    assert "`kubectl get pods` failed after 3 tries" in result.content
    assert "refused" in result.content  # the last error output
    assert calls(log) == [["get", "pods"]] * 3


@pytest.mark.usefixtures("no_cluster")
def test_real_kubectl_binary_directly(ctx: ToolContext) -> None:
    tool = Kubectl(binary=REAL_KUBECTL, tries=2, backoff_s=0.01, timeout_s=10)
    result = run(tool, {"verb": "get", "args": ["pods"], "namespace": "default"}, ctx)
    assert result.error_kind == "k8s_retry_exhausted"
    assert "failed after 2 tries" in result.content


def test_missing_binary_is_not_retried(tmp_path: Path, ctx: ToolContext) -> None:
    tool = Kubectl(binary=str(tmp_path / "no-such-kubectl"), tries=3, backoff_s=1.0)
    started = time.monotonic()
    result = run(tool, {"verb": "get", "args": ["pods"]}, ctx)
    assert time.monotonic() - started < 0.5  # no backoff sleep happened
    assert not result.ok
    assert result.error_kind == "unavailable"
    assert "kubectl is not installed" in result.content


def test_non_executable_binary_is_unavailable(tmp_path: Path, ctx: ToolContext) -> None:
    binary = tmp_path / "kubectl"
    binary.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    result = run(Kubectl(binary=str(binary), backoff_s=1.0), {"verb": "get"}, ctx)
    assert result.error_kind == "unavailable"


# --- policy ------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["delete", "apply", "exec", "edit", "GET", ""])
def test_disallowed_verbs(ctx: ToolContext, verb: str) -> None:
    with pytest.raises(ToolError, match="allowed verbs: get, describe, logs, top, events"):
        run(Kubectl(), {"verb": verb}, ctx)


@pytest.mark.parametrize(
    "args",
    [
        ["pods", "--as=admin"],
        ["pods", "--as", "admin"],
        ["pods", "--as-group=system:masters"],
        ["pods", "--token=abc"],
        ["pods", "--token", "abc"],
        ["-f", "pod.yaml"],
        ["--filename=pod.yaml"],
        ["pods", "-Af", "x.yaml"],
        ["-fpod.yaml"],
        ["pods", "--kubeconfig=/elsewhere"],
        ["pods", "-s", "https://evil.example"],
        ["pods", "--server=https://evil.example"],
        ["pods", "--user=admin"],
        ["pods", "-w"],
        ["pods", "--watch"],
        ["--follow"],
        ["pods", "-o", "go-template-file=/etc/passwd"],
        ["pods", "--template=x"],
        ["pods", "a\x00b"],
    ],
)
def test_refused_args(ctx: ToolContext, args: list[str]) -> None:
    with pytest.raises(ToolError, match=r"not allowed|NUL"):
        run(Kubectl(), {"verb": "get", "args": args}, ctx)


@pytest.mark.parametrize("namespace", ["", "--all-namespaces", "a\x00b"])
def test_invalid_namespace(ctx: ToolContext, namespace: str) -> None:
    with pytest.raises(ToolError, match="invalid namespace"):
        run(Kubectl(), {"verb": "get", "namespace": namespace}, ctx)


def test_invalid_argument_types(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="invalid arguments"):
        run(Kubectl(), {"verb": "get", "args": "pods"}, ctx)


def test_allowed_args_are_passed_without_a_shell(tmp_path: Path, ctx: ToolContext) -> None:
    binary, log = fake_kubectl(tmp_path, "echo listed")
    args = ["pods", "-A", "-owide", "-lapp=web,tier=$(touch pwned)", "--sort-by=.metadata.name"]
    result = run(Kubectl(binary=binary), {"verb": "get", "args": args, "namespace": "kube-system"}, ctx)
    assert result.ok
    assert result.content == "listed\n"
    assert calls(log) == [["get", *args, "--namespace", "kube-system"]]
    assert not (ctx.workspace / "pwned").exists()


# --- retries -----------------------------------------------------------------


def test_retry_then_success(tmp_path: Path, ctx: ToolContext) -> None:
    flag = tmp_path / "failed-once"
    body = f'if [ ! -e {flag} ]; then touch {flag}; echo "transient" >&2; exit 1; fi; echo "pod-a Running"'
    binary, log = fake_kubectl(tmp_path, body)
    result = run(Kubectl(binary=binary, backoff_s=0.01), {"verb": "get", "args": ["pods"]}, ctx)
    assert result.ok
    assert result.content == "pod-a Running\n"
    assert len(calls(log)) == 2


def test_backoff_is_exponential(tmp_path: Path, ctx: ToolContext) -> None:
    binary, log = fake_kubectl(tmp_path, 'echo "boom" >&2; exit 1')
    started = time.monotonic()
    result = run(Kubectl(binary=binary, tries=3, backoff_s=0.1), {"verb": "top", "args": ["nodes"]}, ctx)
    elapsed = time.monotonic() - started
    assert result.error_kind == "k8s_retry_exhausted"
    assert result.content.endswith("last error:\nboom")
    assert len(calls(log)) == 3
    assert 0.3 <= elapsed < 2  # slept 0.1 + 0.2


def test_per_try_timeout_counts_as_failure(tmp_path: Path, ctx: ToolContext) -> None:
    pids = tmp_path / "pids"
    binary, log = fake_kubectl(tmp_path, f"echo $$ >> {pids}; exec sleep 60")
    tool = Kubectl(binary=binary, tries=2, backoff_s=0.01, timeout_s=0.3)
    started = time.monotonic()
    result = run(tool, {"verb": "logs", "args": ["pod-a"]}, ctx)
    assert time.monotonic() - started < 3
    assert result.error_kind == "k8s_retry_exhausted"
    assert "timed out after 0.3 s" in result.content
    assert len(calls(log)) == 2
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid)


def test_cancel_kills_kubectl(tmp_path: Path, ctx: ToolContext) -> None:
    pids = tmp_path / "pids"
    binary, _ = fake_kubectl(tmp_path, f"echo $$ >> {pids}; exec sleep 60")

    async def scenario() -> int:
        task = asyncio.create_task(Kubectl(binary=binary).run({"verb": "get"}, ctx))
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pids.read_text().split()[0])

    assert not _alive(asyncio.run(scenario()))


# --- output ------------------------------------------------------------------


def test_stdout_is_capped(tmp_path: Path, ctx: ToolContext) -> None:
    binary, _ = fake_kubectl(tmp_path, "head -c 200000 /dev/zero | tr '\\0' 'y'")
    result = run(Kubectl(binary=binary), {"verb": "logs", "args": ["pod-a"]}, ctx)
    assert result.ok
    note = f"\n[... {200_000 - OUTPUT_CAP} bytes omitted ...]\n"
    assert note in result.content
    assert result.content.replace(note, "") == "y" * OUTPUT_CAP


def test_empty_stdout_shows_stderr_note(tmp_path: Path, ctx: ToolContext) -> None:
    binary, _ = fake_kubectl(tmp_path, 'echo "No resources found in default namespace." >&2')
    result = run(Kubectl(binary=binary), {"verb": "get", "args": ["pods"]}, ctx)
    assert result.ok
    assert result.content == "No resources found in default namespace."


def _alive(pid: int, limit: float = 2.0) -> bool:
    """Whether `pid` still runs after up to `limit` s; zombies (unreaped orphans) count as gone."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return False
        if state == "Z":
            return False
        time.sleep(0.02)
    return True


# --- read-only is an allow-list (issue 13) -------------------------------------


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("get", ["pods", "-o", "custom-columns-file=/etc/passwd"]),
        ("get", ["pods", "-ocustom-columns-file=/etc/passwd"]),
        ("get", ["pods", "--output=custom-columns-file=/etc/passwd"]),
        ("get", ["pods", "-o", "jsonpath-file=/etc/passwd"]),
        ("get", ["pods", "-o", "go-template-file=/etc/passwd"]),
        ("get", ["pods", "-o", "template-file=/etc/passwd"]),
        ("get", ["--raw", "/api/v1/namespaces/default/services/web:80/proxy/admin"]),
        ("get", ["--raw=/api/v1/nodes/n1/proxy/configz"]),
        ("get", ["pods", "--raw", "/healthz"]),
        ("get", ["/api/v1/namespaces/default/pods/x/proxy"]),
        ("get", ["pods", "--subresource=proxy"]),
        ("get", ["pods", "--context=admin"]),
        ("get", ["pods", "--cluster=other"]),
        ("get", ["pods", "-v=9"]),  # logs request headers, bearer token included
        ("get", ["pods", "--v=9"]),
        ("get", ["pods", "--tls-server-name=x"]),
        ("get", ["pods", "--kubeconfig", "/elsewhere"]),
        ("get", ["pods", "-k", "dir"]),
        ("get", ["pods", "--disable-compression"]),
        ("get", ["pods", "--", "x"]),
        ("get", ["pods", "-R"]),
        ("describe", ["pods", "-o", "json"]),  # a flag of another verb
        ("logs", ["pod-a", "-f"]),
        ("logs", ["pod-a", "--follow=true"]),
        ("top", ["pods", "--watch"]),
        ("events", ["--watch"]),
        ("events", ["-w"]),
        ("get", ["pods", "--all-namespaces=maybe"]),
        ("get", ["http://evil.example/api"]),
    ],
)
def test_only_listed_flags_and_formats_pass(ctx: ToolContext, verb: str, args: list[str]) -> None:
    with pytest.raises(ToolError, match=r"not allowed|takes true or false"):
        run(Kubectl(binary="/nonexistent/kubectl"), {"verb": verb, "args": args}, ctx)


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("get", ["pods", "-o", "custom-columns=NAME:.metadata.name"]),
        ("get", ["pods", "-ojsonpath={.items[*].metadata.name}"]),
        ("get", ["deploy/web", "-n", "prod", "-o=yaml", "--show-labels", "--all-namespaces=false"]),
        ("get", ["pods", "--field-selector", "status.phase=Running", "--sort-by=.metadata.name"]),
        ("describe", ["pod", "web-1", "--show-events=false"]),
        ("logs", ["pod-a", "-c", "app", "--tail=100", "--since=5m", "-p", "--timestamps"]),
        ("top", ["pods", "-A", "--containers"]),
        ("events", ["--for", "pod/web-1", "--types=Warning", "-o", "json"]),
    ],
)
def test_read_only_flags_reach_kubectl_unchanged(
    tmp_path: Path, ctx: ToolContext, verb: str, args: list[str]
) -> None:
    binary, log = fake_kubectl(tmp_path, "echo ok")
    result = run(Kubectl(binary=binary), {"verb": verb, "args": args}, ctx)
    assert result.ok, result.content
    assert calls(log) == [[verb, *args]]


def test_kubectl_gets_a_scrubbed_environment(
    tmp_path: Path, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/some/kubeconfig")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-pass")
    monkeypatch.setenv("BMO_AUTH_TOKEN", "tok-should-not-pass")
    binary, _ = fake_kubectl(tmp_path, "env")
    result = run(Kubectl(binary=binary), {"verb": "get", "args": ["pods"]}, ctx)
    assert "KUBECONFIG=/some/kubeconfig" in result.content
    assert "should-not-pass" not in result.content
