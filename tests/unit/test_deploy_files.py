"""deploy/: what can be checked without a container engine or a cluster.

YAML parses; the compose file, the manifests and the image agree with each
other and with bmo's defaults (port 9000, /healthz, /readyz, BMO_AUTH_TOKEN);
every referenced file exists; the bmo.toml files pass bmo's own config loader;
the systemd unit passes `systemd-analyze verify` when that binary exists.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.config import HttpServer, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "bmo.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
COLLECTOR = REPO / "otel" / "collector.yaml"
BMO_PORT = int(HttpServer().addr.rsplit(":", 1)[1])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def manifests() -> dict[str, dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def settings_from(toml_text: str, tmp_path: Path) -> Any:
    path = tmp_path / "bmo.toml"
    path.write_text(toml_text)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"BMO_GLOBAL_CONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    return load_settings(cwd=cwd, env=env, extra=path)


def test_bmo_default_port_is_what_deploy_uses() -> None:
    assert BMO_PORT == 9000


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *K8S.glob("*.yaml"), *(DEPLOY / "otel").glob("*.yaml")]
    assert len(files) >= 7
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


# --------------------------------------------------------------------------- compose


def test_compose_wires_open_webui_to_bmo_with_the_same_secret() -> None:
    services = compose()["services"]
    assert {"bmo", "open-webui", "otel-collector", "jaeger"} <= services.keys()
    bmo, webui = services["bmo"], services["open-webui"]
    assert webui["environment"]["OPENAI_API_BASE_URL"] == f"http://bmo:{BMO_PORT}/v1"  # no trailing slash
    secret = re.compile(r"^\$\{BMO_AUTH_TOKEN(:?[?-].*)?\}$")
    assert secret.match(bmo["environment"]["BMO_AUTH_TOKEN"])
    assert secret.match(webui["environment"]["OPENAI_API_KEY"])
    headers = yaml.safe_load(webui["environment"]["OPENAI_API_CONFIGS"])["0"]["headers"]
    assert headers == {"X-OpenWebUI-Task": "{{TASK}}"}
    assert webui["environment"]["ENABLE_FORWARD_USER_INFO_HEADERS"] == "True"
    assert webui["depends_on"]["bmo"]["condition"] == "service_healthy"
    assert bmo["command"][-2:] == ["--addr", f"0.0.0.0:{BMO_PORT}"]
    assert f"127.0.0.1:{BMO_PORT}:{BMO_PORT}" in bmo["ports"]
    assert all(str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def test_compose_build_and_mounts_reference_real_paths() -> None:
    services = compose()["services"]
    build = services["bmo"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == CONTAINERFILE
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_compose_trusted_proxy_is_the_open_webui_container() -> None:
    document = compose()
    services = document["services"]
    subnet = ipaddress.ip_network(document["networks"]["bmo-net"]["ipam"]["config"][0]["subnet"])
    webui_ip = ipaddress.ip_address(services["open-webui"]["networks"]["bmo-net"]["ipv4_address"])
    trusted = services["bmo"]["environment"]["BMO_REQUESTER_TRUSTED_PROXIES"]
    assert webui_ip in subnet and ipaddress.ip_address(trusted) == webui_ip
    addresses = [s["networks"]["bmo-net"]["ipv4_address"] for s in services.values()]
    assert len(set(addresses)) == len(addresses)


def test_compose_bmo_config_sends_traces_to_the_collector(tmp_path: Path) -> None:
    services = compose()["services"]
    mount = next(v for v in services["bmo"]["volumes"] if v.split(":")[1] == "/etc/bmo/bmo.toml")
    settings = settings_from((DEPLOY / mount.split(":")[0]).read_text(), tmp_path)
    otel = settings.options.telemetry.otel
    assert otel.enabled and otel.protocol == "http/protobuf"
    target = urlsplit(otel.endpoint)
    assert target.hostname == "otel-collector" and target.hostname in services
    # the collector's OTLP/HTTP receiver, after the compose overlay, listens on that port
    overlay = load_yaml(DEPLOY / "otel" / "collector.compose.yaml")
    http = overlay["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http == f"0.0.0.0:{target.port}"


def test_compose_collector_uses_the_repository_config_and_exports_to_jaeger() -> None:
    services = compose()["services"]
    collector = services["otel-collector"]
    mounted = {v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve() for v in collector["volumes"]}
    configs = [arg.split("=", 1)[1] for arg in collector["command"] if arg.startswith("--config=")]
    assert [mounted[c] for c in configs] == [COLLECTOR, DEPLOY / "otel" / "collector.compose.yaml"]
    base, overlay = load_yaml(COLLECTOR), load_yaml(DEPLOY / "otel" / "collector.compose.yaml")
    # the overlay only overrides what the base config defines (names must match)
    assert overlay["receivers"].keys() <= base["receivers"].keys()
    assert overlay["exporters"].keys() <= base["exporters"].keys()
    for name, exporter in overlay["exporters"].items():
        assert name in base["service"]["pipelines"]["traces"]["exporters"]
        host = exporter["endpoint"].split(":")[0]
        assert host in services and host == "jaeger"


# --------------------------------------------------------------------------- container image


def test_containerfile_is_slim_non_root_and_serves_9000_with_a_healthcheck() -> None:
    text = CONTAINERFILE.read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert f"EXPOSE {BMO_PORT}" in instructions
    (user,) = [line for line in instructions if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    (health,) = [line for line in instructions if line.startswith("HEALTHCHECK ")]
    assert f"127.0.0.1:{BMO_PORT}/healthz" in health
    (cmd,) = [line for line in instructions if line.startswith("CMD ")]
    assert yaml.safe_load(cmd[4:]) == ["bmo", "serve", "--addr", f"0.0.0.0:{BMO_PORT}"]
    for line in instructions:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert "BMO_AUTH_TOKEN" not in "\n".join(i for i in instructions if i.startswith(("ENV", "ARG")))


# --------------------------------------------------------------------------- kubernetes


def test_k8s_deployment_probes_ports_secret_and_config_match() -> None:
    kinds = manifests()
    assert {"Deployment", "Service", "Secret", "ConfigMap", "Kustomization"} <= kinds.keys()
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == BMO_PORT
    assert container["args"][-2:] == ["--addr", f"0.0.0.0:{BMO_PORT}"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    # the Service selects the pods and targets the named port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] in (port["name"], BMO_PORT) and svc_port["port"] == BMO_PORT
    # the token comes from the Secret, under the key bmo reads
    env = {e["name"]: e for e in container["env"]}
    ref = env["BMO_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = kinds["Secret"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # the ConfigMap is mounted where BMO_GLOBAL_CONFIG points
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_volume = volumes[mounts[env["BMO_GLOBAL_CONFIG"]["value"]]]
    assert config_volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert env["BMO_GLOBAL_DATA"]["value"] in mounts
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_kustomization_lists_every_manifest() -> None:
    listed = set(manifests()["Kustomization"]["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_k8s_configmap_bmo_toml_passes_bmos_config_loader(tmp_path: Path) -> None:
    settings = settings_from(manifests()["ConfigMap"]["data"]["bmo.toml"], tmp_path)
    assert settings.options.openai_compat.tool_policy == "chat_only"
    assert settings.options.workspace == "/workspace"
    assert settings.options.http_server.auth_token is None  # the token never lives in the ConfigMap


# --------------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_has_the_required_keys() -> None:
    parsed = unit()
    service = parsed["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0].startswith("/") and exec_start[1] == "serve"
    assert exec_start[-2:] == ["--addr", f"127.0.0.1:{BMO_PORT}"]
    assert service["User"] not in ("root", "0") and service["EnvironmentFile"].startswith("/etc/")
    # the token only comes from the EnvironmentFile: never on the command line or in Environment=
    assert "--auth-token" not in exec_start
    environment = [line for line in UNIT.read_text().splitlines() if line.startswith("Environment=")]
    assert environment and not any("BMO_AUTH_TOKEN" in line for line in environment)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert service[key] == value, key
    assert service["ReadWritePaths"] == service["WorkingDirectory"]
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze here (keys checked above)"
)
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this environment's `bmo`.
    bmo = shutil.which("bmo") or "/bin/true"
    text = UNIT.read_text().replace(shlex.split(unit()["Service"]["ExecStart"])[0], bmo)
    copy = tmp_path / "bmo.service"
    copy.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_stop_timeouts_leave_room_for_the_drain() -> None:
    """systemd, Kubernetes and compose must not SIGKILL bmo while it drains and flushes (SIGTERM first)."""
    from app.cli.serve import KILL_GRACE_S
    from app.config import HttpServer

    needed = HttpServer().shutdown_timeout_s + KILL_GRACE_S / 2
    service = unit()["Service"]
    assert float(service["TimeoutStopSec"].removesuffix("s")) > needed
    assert service["KillMode"] == "mixed"  # SIGTERM to the main process only; it tells the workers
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > needed
    assert float(compose()["services"]["bmo"]["stop_grace_period"].removesuffix("s")) > needed
