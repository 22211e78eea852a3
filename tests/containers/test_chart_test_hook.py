"""The chart's `helm test` hook as its Pod runs it: the operator image, uid 10001, a read-only
root filesystem (no /tmp either), no capabilities, logged in as the hook's own
ServiceAccount, against the local control plane where the chart is installed. kwok runs no
container, so the engine runs it with a kubeconfig holding that ServiceAccount's token."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from modelcycle.cluster.binaries import find
from modelcycle.cluster.images import OPERATOR_IMAGE

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelcycle"
HELM_HOMES = {"HELM_CACHE_HOME": "/tmp/modelcycle-helm/cache", "HELM_CONFIG_HOME": "/tmp/modelcycle-helm/config",
              "HELM_DATA_HOME": "/tmp/modelcycle-helm/data"}


def helm(cluster, *args: str) -> str:
    result = subprocess.run([str(find("helm")), *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **HELM_HOMES, **cluster.env})
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_the_test_hook_passes_in_the_operator_image(container_engine, control_plane, namespace, tmp_path):
    helm(control_plane, "install", "mc", str(CHART), "--namespace", namespace, "--wait=false")
    try:
        hook = [doc for doc in yaml.safe_load_all(helm(control_plane, "template", "mc", str(CHART), "--namespace",
                                                       namespace, "--show-only", "templates/tests/operator-up.yaml"))]
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(hook[:3]))
        pod = hook[3]["spec"]
        container, = pod["containers"]
        account = pod["serviceAccountName"]
        token = control_plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()
        kubeconfig = yaml.safe_load(control_plane.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
        kubeconfig["users"] = [{"name": account, "user": {"token": token}}]
        kubeconfig["contexts"][0]["context"]["user"] = account
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o644)
        env = [arg for item in container["env"] for arg in ("-e", f"{item['name']}={item['value']}")]
        result = container_engine.run(
            "run", "--rm", "--network=host", "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges",
            "--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
            "-v", f"{path}:/etc/modelcycle/kubeconfig:ro", "-e", "KUBECONFIG=/etc/modelcycle/kubeconfig", *env,
            "--entrypoint", container["command"][0], OPERATOR_IMAGE, *container["command"][1:],
            check=False, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok: ModelDeployments are served (modelcycle.io/v1alpha1)" in result.stdout
        assert result.stdout.strip().endswith("the operator is up")
    finally:
        helm(control_plane, "uninstall", "mc", "--namespace", namespace, "--wait=false")
