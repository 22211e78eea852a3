"""The operator image against the local control plane: a container given a kubeconfig
reconciles a ModelDeployment to Ready, under the chart's security context (uid 10001,
read-only root filesystem, no capabilities, only /tmp writable)."""

import sys
import time
from pathlib import Path

import pytest

from modelcycle.cluster.images import OPERATOR_IMAGE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from modeldeployments import CRD, ModelDeployments, base_spec  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture
def operator_container(container_engine, control_plane, namespace, tmp_path):
    """The operator image running with a self-contained copy of the cluster's kubeconfig."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.modelcycle.io")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(control_plane.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
    kubeconfig.chmod(0o644)
    name = f"modelcycle-operator-{namespace}"
    container_engine.run(
        "run", "-d", "--name", name, "--network=host", "--read-only", "--tmpfs", "/tmp", "--cap-drop=all",
        "--security-opt=no-new-privileges", "-v", f"{kubeconfig}:/etc/modelcycle/kubeconfig:ro",
        "-e", "KUBECONFIG=/etc/modelcycle/kubeconfig", "-e", f"MODELCYCLE_NAMESPACES={namespace}",
        OPERATOR_IMAGE,
    )
    try:
        yield name
    finally:
        logs = container_engine.run("logs", name, check=False).stdout
        container_engine.run("rm", "-f", "-t", "5", name, check=False)
        print(logs[-4000:])


def test_operator_image_reconciles_a_model_deployment_to_ready(container_engine, control_plane, namespace,
                                                               operator_container):
    user = container_engine.run("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
                                operator_container).stdout.split()
    assert user == ["10001", "true"]
    mds = ModelDeployments(control_plane, namespace)
    started = time.monotonic()
    mds.apply("fraud", base_spec())
    ready = mds.wait_condition("fraud", "Ready", timeout=60)
    assert "production version 3 serving" in ready["message"]
    assert {d["metadata"]["name"] for d in mds.children("deployments", "fraud")} == {"fraud-production", "fraud-gateway"}
    print(f"operator image: ModelDeployment Ready {time.monotonic() - started:.1f} s after apply")
