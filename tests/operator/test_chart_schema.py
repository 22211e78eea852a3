"""The chart is what Helm users expect, with the real helm: `values.schema.json` refuses a
value of the wrong type or a misspelt key and names it, describes every value of
values.yaml (and the README's table names each), `helm lint --strict` is clean,
`helm install --dry-run=server` passes against the API server, and `helm test` has a hook
whose check, run as the hook's own ServiceAccount, passes on an available operator and says
what is missing otherwise.

kwok runs no container, so the hook Pod cannot run here: its script runs as a local process
with the hook ServiceAccount's token instead, against the same API server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelcycle.cluster import Cluster
from modelcycle.cluster.binaries import find

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelcycle"
HOOK = "templates/tests/operator-up.yaml"
HELM_HOMES = {"HELM_CACHE_HOME": "/tmp/modelcycle-helm/cache", "HELM_CONFIG_HOME": "/tmp/modelcycle-helm/config",
              "HELM_DATA_HOME": "/tmp/modelcycle-helm/data"}


def helm(*args: str, cluster: Cluster | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **HELM_HOMES, **(cluster.env if cluster else {})}
    return subprocess.run([str(find("helm")), *args], capture_output=True, text=True, timeout=120, env=env)


def rendered(*args: str) -> list[dict]:
    result = helm("template", "mc", str(CHART), "--namespace", "models", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize(("setting", "named", "why"), [
    ("operator.concurrency=many", "/operator/concurrency", "got string, want integer"),
    ("operator.concurency=3", "/operator", "additional properties 'concurency' not allowed"),
    ("clusterwide=true", "'", "additional properties 'clusterwide' not allowed"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy", "value must be one of"),
    ("operator.livenessPort=0", "/operator/livenessPort", "minimum"),
    ("watchNamespaces={Models}", "/watchNamespaces/0", "does not match pattern"),
    ("resources.limits.memory=lots", "/resources/limits/memory", "does not match pattern"),
    ("monitoring.serviceMonitor.interval=30", "/monitoring/serviceMonitor/interval", "got number, want string"),
])
def test_a_bad_value_is_refused_with_its_path(setting, named, why):
    result = helm("template", "mc", str(CHART), "--set", setting)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert f"- at '{named}" in result.stderr and why in result.stderr, result.stderr


def _walk(values: dict, schema: dict, definitions: dict, path: str = "") -> list[tuple[str, dict]]:
    """(path, schema) of every value in `values`, down to the values the schema describes as
    a whole (a map of labels, resources)."""
    found = []
    for key, value in values.items():
        node = schema.get("properties", {}).get(key)
        assert node is not None, f"values.yaml has {path}{key}; values.schema.json does not describe it"
        node = {**definitions.get(node.get("$ref", "").rsplit("/", 1)[-1], {}), **node}
        if isinstance(value, dict) and value and "properties" in node:
            found += _walk(value, node, definitions, f"{path}{key}.")
        else:
            found.append((f"{path}{key}", node))
    return found


def test_every_value_is_in_the_schema_and_the_readme():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves = _walk(values, schema, schema["definitions"])
    assert len(leaves) >= 20
    undescribed = [path for path, node in leaves if not node.get("description")]
    assert not undescribed, f"no description in values.schema.json: {undescribed}"
    readme = (CHART / "README.md").read_text()
    unlisted = [path for path, _ in leaves if f"| `{path}` |" not in readme]
    assert not unlisted, f"not in the values table of charts/modelcycle/README.md: {unlisted}"


def test_lint_strict_is_clean_with_every_option_on():
    for options in ([], ["--set", "clusterWide=true", "--set", "podDisruptionBudget.enabled=true",
                         "--set", "monitoring.serviceMonitor.enabled=true",
                         "--set", "monitoring.grafanaDashboard.enabled=true"]):
        result = helm("lint", str(CHART), "--strict", *options)
        assert result.returncode == 0 and "0 chart(s) failed" in result.stdout, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_the_test_hook_is_a_locked_down_pod_with_rights_to_read_only():
    docs = rendered("--show-only", HOOK)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "Pod"]
    for doc in docs:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weights = [int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in docs]
    assert max(weights[:3]) < weights[3], "the ServiceAccount and its rights come before the Pod"
    pod = docs[3]["spec"]
    container, = pod["containers"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == docs[0]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["image"] == "modelcycle/modelcycle-operator:0.1.0"
    assert container["command"][2] == (CHART / "files" / "operator_up.py").read_text()
    rules = docs[1]["rules"]
    assert {verb for rule in rules for verb in rule["verbs"]} == {"get", "list"}
    operator, = [d for d in rendered() if d["kind"] == "Deployment"]
    selector = operator["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= docs[3]["metadata"]["labels"].items(), "the operator's ReplicaSet would adopt it"


@pytest.mark.cluster
def test_install_dry_run_server_passes_and_lists_the_test_hook(control_plane: Cluster, namespace: str):
    result = helm("install", "mc", str(CHART), "--namespace", namespace, "--dry-run=server", "--skip-crds",
                  "--set", "podDisruptionBudget.enabled=true", "--set", "monitoring.grafanaDashboard.enabled=true",
                  cluster=control_plane)
    assert result.returncode == 0, result.stderr
    hooks = [doc for doc in yaml.safe_load_all(result.stdout.split("HOOKS:")[1].split("MANIFEST:")[0]) if doc]
    assert {(d["kind"], d["metadata"]["annotations"]["helm.sh/hook"]) for d in hooks} == {
        ("ServiceAccount", "test"), ("Role", "test"), ("RoleBinding", "test"), ("Pod", "test")}
    refused = helm("install", "mc", str(CHART), "--namespace", namespace, "--dry-run=server", "--skip-crds",
                   "--set", "serviceAccount.create=no", cluster=control_plane)
    assert refused.returncode != 0 and "- at '/serviceAccount/create': got string, want boolean" in refused.stderr


def _status(cluster: Cluster, namespace: str) -> dict:
    found = cluster.kubectl("get", "deployment/mc-modelcycle-operator", "-n", namespace, "-o", "json").stdout
    return json.loads(found).get("status", {})


@pytest.mark.cluster
def test_the_hooks_check_passes_on_an_available_operator_and_says_what_is_missing(
    control_plane: Cluster, namespace: str, tmp_path: Path
):
    install = helm("install", "mc", str(CHART), "--namespace", namespace, "--wait=false", cluster=control_plane)
    assert install.returncode == 0, install.stderr
    try:
        hook = rendered("--namespace", namespace, "--show-only", HOOK)
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(hook[:3]))
        command = hook[3]["spec"]["containers"][0]["command"]
        assert command[:2] == ["python", "-c"] and command[3:5] == [namespace, "mc-modelcycle-operator"]

        def check(account: str, seconds: str) -> subprocess.CompletedProcess[str]:
            """The hook's command, logged in as `account` through a kubeconfig."""
            token = control_plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()
            kubeconfig = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
            kubeconfig["users"] = [{"name": account, "user": {"token": token}}]
            kubeconfig["contexts"][0]["context"]["user"] = account
            path = tmp_path / f"{account}.kubeconfig"
            path.write_text(yaml.safe_dump(kubeconfig))
            return subprocess.run([sys.executable, "-c", command[2], *command[3:5], seconds], capture_output=True,
                                  text=True, timeout=120, env={**os.environ, "KUBECONFIG": str(path)})

        account = hook[0]["metadata"]["name"]
        up = check(account, "60")
        assert up.returncode == 0, up.stdout + up.stderr
        assert re.search(r"ok: deployment mc-modelcycle-operator: [1-9] available replica\(s\)", up.stdout)
        assert "ok: ModelDeployments are served (modelcycle.io/v1alpha1)" in up.stdout
        assert up.stdout.strip().endswith("the operator is up")

        forbidden = check("default", "1")
        assert forbidden.returncode == 1
        assert "not up: GET /apis/apps/v1/namespaces" in forbidden.stderr and "HTTP 403" in forbidden.stderr

        control_plane.kubectl("scale", "deployment/mc-modelcycle-operator", "-n", namespace, "--replicas=0")
        deadline = time.monotonic() + 30
        while _status(control_plane, namespace).get("availableReplicas") and time.monotonic() < deadline:
            time.sleep(0.5)
        down = check(account, "3")
        assert down.returncode == 1, down.stdout
        assert "not up: deployment mc-modelcycle-operator: no available replica (scaled to 0)" in down.stderr, \
            down.stderr
    finally:
        helm("uninstall", "mc", "--namespace", namespace, "--wait=false", cluster=control_plane)
