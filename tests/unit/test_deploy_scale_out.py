"""deploy/ for several replicas on one PostgreSQL store: what can be checked without an engine.

The compose override and the kustomize overlay parse, agree with each other and
with bmo (the store URL variable, the shared workspace, per-replica data). When
`kubectl` is installed the overlay is rendered by kustomize itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from app.events.location import ENV_STORE_URL, store_url
from tests.unit.test_deploy_files import DEPLOY, compose

OVERRIDE = DEPLOY / "compose.scale-out.yaml"
OVERLAY = DEPLOY / "k8s-scale-out"


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (`!reset`, `!override`) read as plain values."""


_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)
_ComposeLoader.add_constructor("!reset", lambda loader, node: [])


def override() -> dict[str, Any]:
    return yaml.load(OVERRIDE.read_text(), Loader=_ComposeLoader)


def test_compose_override_runs_two_replicas_on_postgres_sharing_the_workspace() -> None:
    services = override()["services"]
    bmo, postgres = services["bmo"], services["postgres"]
    assert bmo["deploy"]["replicas"] == 2
    url = bmo["environment"][ENV_STORE_URL].replace(
        "${BMO_PG_PASSWORD:?set BMO_PG_PASSWORD in deploy/.env}", "pw"
    )
    assert store_url(None, {ENV_STORE_URL: url}) == url and "@postgres:5432/bmo" in url
    assert (
        postgres["environment"]["POSTGRES_USER"] == "bmo" and postgres["environment"]["POSTGRES_DB"] == "bmo"
    )
    assert bmo["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert bmo["ports"] == []  # two replicas cannot publish one port
    mounts = [v.split(":")[1] for v in bmo["volumes"]]
    assert "/workspace" in mounts and "/data" not in mounts  # shared workspace; own /data each
    assert set(compose()["services"]["bmo"]["volumes"][2:3]) <= set(bmo["volumes"])  # same workspace volume
    assert "bmo-postgres" in override()["volumes"]


def overlay_files() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in OVERLAY.glob("*.yaml")}


def test_k8s_overlay_two_replicas_store_url_from_a_secret() -> None:
    files = overlay_files()
    kustomization = files["kustomization.yaml"][0]
    assert "../k8s" in kustomization["resources"]
    for resource in kustomization["resources"][1:]:
        assert (OVERLAY / resource).exists()
    patch = files["deployment-patch.yaml"][0]
    assert patch["spec"]["replicas"] == 2
    env = patch["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if e["name"] == ENV_STORE_URL)["valueFrom"]["secretKeyRef"]
    secret = next(d for d in files["postgres.yaml"] if d["kind"] == "Secret")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert store_url(None, {ENV_STORE_URL: secret["stringData"][ref["key"]]})
    kinds = {d["kind"] for d in files["postgres.yaml"]}
    assert {"StatefulSet", "Service", "Secret"} <= kinds
    assert files["workspace-pvc.yaml"][0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_overlay_renders_with_kustomize_when_kubectl_is_there() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the static checks above still ran
        return
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "bmo-workspace"
    assert not any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "bmo-data" for d in docs)
    assert Path(OVERLAY / "postgres.yaml").exists()
