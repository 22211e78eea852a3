"""The chart, with the real helm: it lints, installs the CRD, the operator and its RBAC,
the operator Deployment becomes Available on kwok, and the operator runs with nothing but
the chart's RBAC."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from modeldeployments import ROOT, ModelDeployments, OperatorProcess, base_spec

from modelcycle.cluster import Cluster
from modelcycle.cluster.binaries import find

pytestmark = pytest.mark.cluster

CHART = ROOT / "charts" / "modelcycle"


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [str(find("helm")), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **cluster.env, "HELM_CACHE_HOME": "/tmp/modelcycle-helm/cache",
             "HELM_CONFIG_HOME": "/tmp/modelcycle-helm/config", "HELM_DATA_HOME": "/tmp/modelcycle-helm/data"},
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture
def release(control_plane: Cluster, namespace: str) -> Iterator[str]:
    """The chart installed in the test's namespace with its default values: it serves that
    namespace only."""
    helm(control_plane, "install", "mc", str(CHART), "--namespace", namespace, "--wait=false")
    yield "mc"
    helm(control_plane, "uninstall", "mc", "--namespace", namespace, "--wait=false")


def _can(cluster: Cluster, account: str, verb: str, resource: str, where: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, "-n", where, "--as", account, check=False)
    return result.stdout.strip() == "yes"


def test_chart_lints(control_plane: Cluster) -> None:
    out = helm(control_plane, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


def test_chart_installs_crd_and_an_available_operator(control_plane: Cluster, namespace: str, release: str) -> None:
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.modelcycle.io")
    control_plane.kubectl("wait", "--for=condition=Available", "--timeout=60s", "-n", namespace,
                          "deployment/mc-modelcycle-operator")
    deployment = yaml.safe_load(control_plane.kubectl("get", "deployment/mc-modelcycle-operator", "-n", namespace,
                                                      "-o", "yaml").stdout)
    pod = deployment["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert container["command"] == ["python", "-m", "modelcycle.operator"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MODELCYCLE_NAMESPACES"] == namespace

    account = f"system:serviceaccount:{namespace}:mc-modelcycle-operator"

    def can(verb: str, resource: str, where: str = namespace) -> bool:
        return _can(control_plane, account, verb, resource, where)

    assert can("patch", "deployments.apps") and can("delete", "services") and can("patch", "modeldeployments/status")
    assert not can("get", "secrets") and not can("create", "pods") and not can("delete", "configmaps")
    assert not can("get", "deployments.apps"), "the operator reads through watches only"
    assert not can("patch", "deployments.apps", "default"), "a namespaced install must not reach other namespaces"
    assert not can("patch", "deployments.apps", "kube-system")
    assert env["MODELCYCLE_GATEWAY_URL_ANNOTATION"] == "false"
    cluster_roles = control_plane.kubectl("get", "clusterroles", "-l", "app.kubernetes.io/instance=mc", "-o", "name")
    assert f"{namespace}" not in cluster_roles.stdout, "the default install creates nothing cluster-wide"


def test_cluster_wide_is_an_explicit_value(control_plane: Cluster, namespace: str) -> None:
    helm(control_plane, "install", "mcw", str(CHART), "--namespace", namespace, "--set", "clusterWide=true",
         "--skip-crds", "--wait=false")
    try:
        deployment = yaml.safe_load(control_plane.kubectl("get", "deployment/mcw-modelcycle-operator", "-n", namespace,
                                                          "-o", "yaml").stdout)
        container, = deployment["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert not env["MODELCYCLE_NAMESPACES"]  # empty: every namespace
        account = f"system:serviceaccount:{namespace}:mcw-modelcycle-operator"
        control_plane.kubectl("wait", "--for=create", "--timeout=20s", f"clusterrolebinding/mcw-modelcycle-operator-{namespace}")
        assert _can(control_plane, account, "patch", "deployments.apps", "default")
        assert not _can(control_plane, account, "get", "secrets", "default")
    finally:
        helm(control_plane, "uninstall", "mcw", "--namespace", namespace, "--wait=false")


def test_cluster_wide_and_a_namespace_list_are_refused_together(control_plane: Cluster, namespace: str) -> None:
    result = subprocess.run(
        [str(find("helm")), "template", "x", str(CHART), "--set", "clusterWide=true", "--set", "watchNamespaces={a}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "leave watchNamespaces empty" in result.stderr


def test_operator_runs_with_only_the_charts_rbac(
    control_plane: Cluster, namespace: str, release: str, mds: ModelDeployments, tmp_path: Path
) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, reconciles a
    ModelDeployment: the RBAC holds every verb it uses."""
    token = control_plane.kubectl("create", "token", "mc-modelcycle-operator", "-n", namespace).stdout.strip()
    admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    kubeconfig = tmp_path / "operator-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(admin))
    as_operator = Cluster(kubeconfig=kubeconfig, kubectl_cache_dir=tmp_path / "kubectl-cache")

    process = OperatorProcess(as_operator, namespace, tmp_path / "operator.log").start()
    try:
        mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def"}))
        mds.wait_condition("fraud", "Ready", timeout=40)
        mds.patch("fraud", {"spec": {"shadow": None}})
        mds.wait_condition("fraud", "ShadowReady", "False", reason="NoShadow", timeout=20)
        assert {d["metadata"]["name"] for d in mds.children("deployments", "fraud")} == {"fraud-production", "fraud-gateway"}
        assert "Rollout" in {e["reason"] for e in mds.events("fraud")}
    finally:
        process.stop()
    log = process.log.read_text()
    assert "forbidden" not in log.lower(), process.tail()


def test_install_dry_run_against_the_api_server_prints_the_notes(control_plane: Cluster, namespace: str) -> None:
    """The API server itself validates every object (`--dry-run=server`), PDB included, and
    the notes say what was installed and how to apply a first ModelDeployment."""
    out = helm(control_plane, "install", "mcd", str(CHART), "--namespace", namespace, "--dry-run=server",
               "--skip-crds", "--set", "podDisruptionBudget.enabled=true")
    manifests = [doc for doc in yaml.safe_load_all(out.split("NOTES:")[0].split("MANIFEST:")[1]) if doc]
    assert {m["kind"] for m in manifests} >= {"Deployment", "Role", "RoleBinding", "ServiceAccount", "PodDisruptionBudget"}
    notes = out.split("NOTES:")[1]
    assert f"a Role in each namespace it serves: {namespace}" in notes
    assert f"kubectl apply -n {namespace} -f -" in notes and "kind: ModelDeployment" in notes
    assert control_plane.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.strip() == ""
